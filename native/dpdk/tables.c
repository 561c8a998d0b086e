/* Tables of the DPDK worker (see tables.h): exact-match and longest-prefix
 * tables built from the compiled policy's packed entries, the per-source
 * bucket cache, and policy snapshots keyed by the BPF map names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "table_lookup.h"

static void *exact_lookup(const struct ew_table *t, const void *key)
{
    return ew_exact_lookup_n(t, key, t->key_size);
}

/* Host bits past `bits` cleared in a prefix of `size` bytes. */
static void mask_bits(uint8_t *data, uint32_t size, uint32_t bits)
{
    for (uint32_t i = 0; i < size; i++) {
        if (i * 8 >= bits)
            data[i] = 0;
        else if (i * 8 + 8 > bits)
            data[i] &= (uint8_t)(0xff << (8 - (bits - i * 8)));
    }
}

static int cmp_desc(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? 1 : x > y ? -1 : 0;
}

struct ew_table *ew_table_build(uint32_t kind, uint32_t key_size, uint32_t value_size, const void *keys,
                                const void *values, uint32_t count, char *error, size_t error_size)
{
    struct ew_table *t = calloc(1, sizeof(*t));
    uint32_t capacity = 2, data_size = key_size - 4;
    uint8_t key[64], seen[161] = {0};

    if (!t || key_size == 0 || key_size > sizeof(key) || (kind == EW_TABLE_LPM && key_size <= 4)) {
        snprintf(error, error_size, "bad table layout (key %u bytes)", key_size);
        free(t);
        return NULL;
    }
    while (capacity < 2 * (uint64_t)count)
        capacity <<= 1;
    t->self = t;
    t->kind = kind;
    t->key_size = key_size;
    t->value_size = value_size;
    t->mask = capacity - 1;
    t->used = calloc(capacity, 1);
    t->keys = calloc(capacity, key_size);
    t->values = calloc(capacity, value_size ? value_size : 1);
    if (!t->used || !t->keys || !t->values) {
        snprintf(error, error_size, "out of memory for a table of %u entries", count);
        ew_table_free(t);
        return NULL;
    }
    for (uint32_t n = 0; n < count; n++) {
        int found;
        uint32_t i;

        memcpy(key, (const uint8_t *)keys + (size_t)n * key_size, key_size);
        if (kind == EW_TABLE_LPM) {
            uint32_t bits;

            memcpy(&bits, key, 4);
            if (bits > data_size * 8 || bits > 160) {
                snprintf(error, error_size, "prefix length %u is longer than the key", bits);
                ew_table_free(t);
                return NULL;
            }
            mask_bits(key + 4, data_size, bits);
            if (!seen[bits]) {
                seen[bits] = 1;
                t->lengths[t->nlengths++] = bits;
            }
        }
        i = ew_table_slot(t, key, key_size, &found);
        if (!found) {
            t->used[i] = 1;
            t->count++;
        }
        memcpy(t->keys + (size_t)i * key_size, key, key_size);
        memcpy(t->values + (size_t)i * value_size, (const uint8_t *)values + (size_t)n * value_size, value_size);
    }
    qsort(t->lengths, t->nlengths, sizeof(t->lengths[0]), cmp_desc);
    return t;
}

void ew_table_free(struct ew_table *t)
{
    if (!t)
        return;
    free(t->used);
    free(t->keys);
    free(t->values);
    free(t);
}

/* An LPM trie lookup: the key's prefixlen bounds the match, as in the kernel. */
void *ew_lpm_lookup(const struct ew_table *t, const void *key)
{
    uint8_t probe_key[64];
    uint32_t limit, data_size = t->key_size - 4;

    memcpy(&limit, key, 4);
    for (uint32_t n = 0; n < t->nlengths; n++) {
        uint32_t bits = t->lengths[n];
        void *value;

        if (bits > limit)
            continue;
        memcpy(probe_key, &bits, 4);
        memcpy(probe_key + 4, (const uint8_t *)key + 4, data_size);
        mask_bits(probe_key + 4, data_size, bits);
        value = exact_lookup(t, probe_key);
        if (value)
            return value;
    }
    return NULL;
}

int ew_source_cache_init(struct ew_source_cache *c, uint32_t entries)
{
    uint32_t sets = 1;

    while (sets * EW_SOURCE_WAYS < entries)
        sets <<= 1;
    c->mask = sets - 1;
    c->entries = calloc((size_t)sets * EW_SOURCE_WAYS, sizeof(*c->entries));
    return c->entries ? 0 : -1;
}

void ew_source_cache_free(struct ew_source_cache *c)
{
    free(c->entries);
    c->entries = NULL;
}

static struct ew_source_entry *source_set(struct ew_source_cache *c, const struct ew_source_key *key)
{
    return c->entries + ((uint32_t)ew_hash_key(key, sizeof(*key)) & c->mask) * EW_SOURCE_WAYS;
}

void *ew_source_cache_lookup(struct ew_source_cache *c, const struct ew_source_key *key)
{
    struct ew_source_entry *set = source_set(c, key);

    for (int w = 0; w < EW_SOURCE_WAYS; w++)
        if (set[w].used && memcmp(&set[w].key, key, sizeof(*key)) == 0)
            return &set[w].bucket;
    return NULL;
}

/* BPF_NOEXIST into an LRU: an existing entry stays, else the least recently
 * refilled way of the set is replaced. */
int ew_source_cache_insert(struct ew_source_cache *c, const struct ew_source_key *key,
                           const struct ew_source_bucket *value)
{
    struct ew_source_entry *set = source_set(c, key), *victim = &set[0];

    for (int w = 0; w < EW_SOURCE_WAYS; w++) {
        if (set[w].used && memcmp(&set[w].key, key, sizeof(*key)) == 0)
            return -1;
        if (!set[w].used) {
            victim = &set[w];
            break;
        }
        if (set[w].bucket.last_ns < victim->bucket.last_ns)
            victim = &set[w];
    }
    victim->key = *key;
    victim->bucket = *value;
    victim->used = 1;
    return 0;
}

struct ew_snapshot *ew_snapshot_new(uint32_t slots)
{
    struct ew_snapshot *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    s->slots = slots;
    s->flood_policies = calloc(slots ? slots : 1, sizeof(struct ew_flood_policy));
    if (!s->flood_policies) {
        free(s);
        return NULL;
    }
    return s;
}

/* Every policy map and block table by its BPF name: its layout and where it goes. */
struct table_spec {
    const char *name;
    uint32_t kind;
    uint32_t key_size, value_size;
    size_t offset;          /* of the struct ew_table * in the snapshot */
};

#define SPEC(name, kind, key, value, field) { name, kind, sizeof(key), sizeof(value), offsetof(struct ew_snapshot, field) }
static const struct table_spec TABLES[] = {
    SPEC("ew_vips_v4", EW_TABLE_HASH, __u32, struct ew_vip, vips_v4),
    SPEC("ew_vips_v6", EW_TABLE_HASH, struct ew_vip_v6_key, struct ew_vip, vips_v6),
    SPEC("ew_vip_ports_v4", EW_TABLE_HASH, struct ew_vip_port_v4_key, struct ew_vip, vip_ports_v4),
    SPEC("ew_vip_ports_v6", EW_TABLE_HASH, struct ew_vip_port_v6_key, struct ew_vip, vip_ports_v6),
    SPEC("ew_tenants", EW_TABLE_HASH, __u32, struct ew_tenant, tenants),
    SPEC("ew_port_blocks", EW_TABLE_HASH, struct ew_port_key, __u8, port_blocks),
    SPEC("ew_gblock_v4", EW_TABLE_HASH, __u32, struct ew_block_node, gblock_v4),
    SPEC("ew_tblock_v4", EW_TABLE_HASH, struct ew_tenant_block_key, struct ew_block_node, tblock_v4),
    SPEC("ew_gblock_v6", EW_TABLE_LPM, struct ew_lpm_v6_key, struct ew_block_value, gblock_v6),
    SPEC("ew_tblock_v6", EW_TABLE_LPM, struct ew_tenant_lpm_v6_key, struct ew_block_value, tblock_v6),
};

int ew_snapshot_fill(struct ew_snapshot *s, const char *map_name, const void *keys, const void *values,
                     uint32_t count, uint32_t key_size, uint32_t value_size, char *error, size_t error_size)
{
    if (strcmp(map_name, "ew_config") == 0 || strcmp(map_name, "ew_flood_policies") == 0) {
        int config = map_name[3] == 'c';
        uint32_t want = config ? sizeof(struct ew_config) : sizeof(struct ew_flood_policy);

        if (key_size != sizeof(__u32) || value_size != want) {
            snprintf(error, error_size, "%s: entries of %u+%u bytes, the ABI says %zu+%u", map_name, key_size,
                     value_size, sizeof(__u32), want);
            return -1;
        }
        for (uint32_t n = 0; n < count; n++) {
            __u32 index;

            memcpy(&index, (const uint8_t *)keys + (size_t)n * 4, 4);
            if (config ? index != 0 : index >= s->slots) {
                snprintf(error, error_size, "%s: index %u is beyond its %u entries", map_name, index,
                         config ? 1 : s->slots);
                return -1;
            }
            memcpy(config ? (void *)&s->config : (void *)&s->flood_policies[index],
                   (const uint8_t *)values + (size_t)n * want, want);
        }
        return 0;
    }
    for (size_t i = 0; i < sizeof(TABLES) / sizeof(TABLES[0]); i++) {
        const struct table_spec *spec = &TABLES[i];
        struct ew_table **slot;

        if (strcmp(map_name, spec->name) != 0)
            continue;
        if (key_size != spec->key_size || value_size != spec->value_size) {
            snprintf(error, error_size, "%s: entries of %u+%u bytes, the ABI says %u+%u", map_name, key_size,
                     value_size, spec->key_size, spec->value_size);
            return -1;
        }
        slot = (struct ew_table **)((char *)s + spec->offset);
        ew_table_free(*slot);
        *slot = ew_table_build(spec->kind, key_size, value_size, keys, values, count, error, error_size);
        return *slot ? 0 : -1;
    }
    snprintf(error, error_size, "%s is not a policy map of the datapath", map_name);
    return -1;
}

void ew_snapshot_free(struct ew_snapshot *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < sizeof(TABLES) / sizeof(TABLES[0]); i++)
        ew_table_free(*(struct ew_table **)((char *)s + TABLES[i].offset));
    free(s->flood_policies);
    free(s);
}
