/* Lookups in the worker's exact-match tables, inline so that on the packet
 * path the key size is a constant: hashing and comparing a 4- or 8-byte key
 * become a few instructions instead of calls (tables.c builds the tables
 * with the same hash). */
#ifndef EW_DPDK_TABLE_LOOKUP_H
#define EW_DPDK_TABLE_LOOKUP_H

#include <stdint.h>
#include <string.h>
#include "tables.h"

static inline __attribute__((always_inline)) uint64_t ew_hash_key(const void *key, uint32_t n)
{
    const uint8_t *p = key;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ n, w;

    while (n >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t v;

        memcpy(&v, p, 4);
        h = (h ^ v) * 0xc4ceb9fe1a85ec53ULL;
        p += 4;
        n -= 4;
    }
    while (n--)
        h = (h ^ *p++) * 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 29);
}

/* Slot of `key`, or of the free slot where it would go; *found says which. */
static inline __attribute__((always_inline)) uint32_t ew_table_slot(const struct ew_table *t, const void *key,
                                                                   uint32_t n, int *found)
{
    uint32_t i = (uint32_t)ew_hash_key(key, n) & t->mask;

    while (t->used[i]) {
        if (memcmp(t->keys + (size_t)i * n, key, n) == 0) {
            *found = 1;
            return i;
        }
        i = (i + 1) & t->mask;
    }
    *found = 0;
    return i;
}

static inline __attribute__((always_inline)) void *ew_exact_lookup_n(const struct ew_table *t, const void *key,
                                                                    uint32_t n)
{
    int found;
    uint32_t i;

    if (!t || t->count == 0)
        return NULL;
    i = ew_table_slot(t, key, n, &found);
    return found ? t->values + (size_t)i * t->value_size : NULL;
}

EW_LEAF void *ew_lpm_lookup(const struct ew_table *t, const void *key);

/* Any table, by its own key size: the common sizes get constant-size code. */
static inline __attribute__((always_inline)) void *ew_table_find(const struct ew_table *t, const void *key)
{
    if (!t || t->count == 0)
        return NULL;
    if (t->kind == EW_TABLE_LPM)
        return ew_lpm_lookup(t, key);
    switch (t->key_size) {
    case 4: return ew_exact_lookup_n(t, key, 4);
    case 8: return ew_exact_lookup_n(t, key, 8);
    case 16: return ew_exact_lookup_n(t, key, 16);
    case 20: return ew_exact_lookup_n(t, key, 20);
    default: return ew_exact_lookup_n(t, key, t->key_size);
    }
}

#endif /* EW_DPDK_TABLE_LOOKUP_H */
