/* Flood generator for the lab (not part of the datapath): run through
 * BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, it turns one template frame
 * into a stream of frames transmitted out of the attacker's interface,
 * each with a random source from a prefix, random ports where asked, and
 * checksums recomputed from scratch. The kernel recycles frame pages
 * without restoring their contents, and a page may come back changed (the
 * edge turns SYNs into cookie SYN-ACKs in place), so the headers are
 * rewritten from the template on every run. IPv4 and IPv6 templates. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct gen_config {
    __u32 src_base;       /* host order; random bits are ORed in under src_random_mask */
    __u32 src_random_mask;
    __u16 sport_min;      /* host order; span 0 keeps the template's port */
    __u16 sport_span;
    __u16 dport_min;
    __u16 dport_span;
    __u32 l4_length;      /* TCP/UDP header + payload bytes to checksum; 0 = leave L4 alone */
    __u32 header_len;     /* bytes of `header` to write over the frame's start, even, <= GEN_HEADER_MAX */
    __u8 header[64];      /* GEN_HEADER_MAX: the template's first bytes */
    __u32 src6_base[4];   /* IPv6 templates: network order; random bits are ORed in under src6_mask */
    __u32 src6_mask[4];
};

#define GEN_HEADER_MAX 64

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct gen_config);
} gen_config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} gen_sent SEC(".maps");

#define MAX_L4_LENGTH 1480
#define MAX_L4_WORDS (MAX_L4_LENGTH / 4)

static __always_inline __u16 fold(__u64 sum)
{
#pragma unroll
    for (int i = 0; i < 4; i++)
        sum = (sum & 0xffff) + (sum >> 16);
    return ~sum & 0xffff;
}

static __always_inline __u16 random_port(__u16 min, __u16 span, __u16 current)
{
    return span ? bpf_htons(min + bpf_get_prandom_u32() % span) : current;
}

/* Sums `len` bytes of L4 (a multiple of 4) into `sum`, word by word: the
 * verifier bounds each read, not a variable span. */
static __always_inline __u64 sum_l4(void *l4, void *data_end, __u32 len, __u64 sum)
{
    for (int i = 0; i < MAX_L4_WORDS; i++) {
        __u32 *word = l4 + i * 4;

        if (i * 4 >= len || (void *)(word + 1) > data_end)
            break;
        sum += *word;
    }
    return sum;
}

#define GEN_IPPROTO_ICMPV6 58

/* New ports (and sequence number) where the template asks for them, and the
 * checksum field cleared for summing. */
static __always_inline int vary_l4(void *l4, void *data_end, __u8 proto, struct gen_config *cfg)
{
    if (proto == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;

        if ((void *)(tcp + 1) > data_end)
            return -1;
        tcp->source = random_port(cfg->sport_min, cfg->sport_span, tcp->source);
        tcp->dest = random_port(cfg->dport_min, cfg->dport_span, tcp->dest);
        tcp->seq = bpf_get_prandom_u32();
        tcp->check = 0;
    } else if (proto == IPPROTO_UDP) {
        struct udphdr *udp = l4;

        if ((void *)(udp + 1) > data_end)
            return -1;
        udp->source = random_port(cfg->sport_min, cfg->sport_span, udp->source);
        udp->dest = random_port(cfg->dport_min, cfg->dport_span, udp->dest);
        udp->check = 0;
    } else if (proto == GEN_IPPROTO_ICMPV6) {
        if (l4 + 4 > data_end)
            return -1;
        ((__u16 *)l4)[1] = 0;
    }
    return 0;
}

/* Stores the folded sum in the L4 checksum field (bounds again: checks made
 * before the summing loop do not carry over for the verifier). */
static __always_inline int set_l4_checksum(void *l4, void *data_end, __u8 proto, __u64 sum)
{
    __u16 check = fold(sum);

    if (proto == IPPROTO_TCP) {
        if (l4 + sizeof(struct tcphdr) > data_end)
            return -1;
        ((struct tcphdr *)l4)->check = check;
    } else if (proto == IPPROTO_UDP) {
        if (l4 + sizeof(struct udphdr) > data_end)
            return -1;
        ((struct udphdr *)l4)->check = check ? check : 0xffff;
    } else if (proto == GEN_IPPROTO_ICMPV6) {
        if (l4 + 4 > data_end)
            return -1;
        ((__u16 *)l4)[1] = check;
    }
    return 0;
}

static __always_inline int flood_gen_ipv6(void *data, void *data_end, struct gen_config *cfg)
{
    struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
    __u32 len = cfg->l4_length;
    __u32 *src;
    void *l4;
    __u64 sum;

    if ((void *)(ip6 + 1) > data_end)
        return -1;
    src = (__u32 *)&ip6->saddr;
#pragma unroll
    for (int i = 0; i < 4; i++)
        src[i] = cfg->src6_base[i] | (bpf_get_prandom_u32() & cfg->src6_mask[i]);
    if (!len || len > MAX_L4_LENGTH || (len & 3))
        return 0;
    l4 = ip6 + 1;
    if (l4 + len > data_end || vary_l4(l4, data_end, ip6->nexthdr, cfg) < 0)
        return -1;
    /* pseudo header (addresses, L4 length, next header), then the segment */
    sum = bpf_htonl(len) + bpf_htonl(ip6->nexthdr);
#pragma unroll
    for (int i = 0; i < 4; i++)
        sum += (__u64)((__u32 *)&ip6->saddr)[i] + ((__u32 *)&ip6->daddr)[i];
    return set_l4_checksum(l4, data_end, ip6->nexthdr, sum_l4(l4, data_end, len, sum));
}

SEC("xdp")
int flood_gen(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    __u32 zero = 0;
    struct gen_config *cfg = bpf_map_lookup_elem(&gen_config, &zero);
    __u64 *sent = bpf_map_lookup_elem(&gen_sent, &zero);
    __u64 sum;

    if (!cfg || !sent)
        return XDP_ABORTED;
    for (int i = 0; i < GEN_HEADER_MAX / 2; i++) {
        __u16 *word = data + i * 2;

        if (i * 2 >= cfg->header_len)
            break;
        if ((void *)(word + 1) > data_end)
            return XDP_ABORTED;
        *word = *(__u16 *)&cfg->header[i * 2];
    }
    if ((void *)(eth + 1) > data_end)
        return XDP_ABORTED;
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        if (flood_gen_ipv6(data, data_end, cfg) < 0)
            return XDP_ABORTED;
        *sent += 1;
        return XDP_TX;
    }
    if ((void *)(ip + 1) > data_end || ip->ihl != 5)
        return XDP_ABORTED;
    ip->saddr = bpf_htonl(cfg->src_base | (bpf_get_prandom_u32() & cfg->src_random_mask));
    ip->id = bpf_get_prandom_u32() & 0xffff;
    ip->check = 0;
    ip->check = fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));

    if (cfg->l4_length && cfg->l4_length <= MAX_L4_LENGTH && !(cfg->l4_length & 3)) {
        __u32 len = cfg->l4_length;
        void *l4 = ip + 1;

        if (l4 + len > data_end || vary_l4(l4, data_end, ip->protocol, cfg) < 0)
            return XDP_ABORTED;
        /* pseudo header (addresses, protocol, L4 length), then the segment */
        sum = sum_l4(l4, data_end, len, (__u64)ip->saddr + ip->daddr + bpf_htonl((ip->protocol << 16) | len));
        if (set_l4_checksum(l4, data_end, ip->protocol, sum) < 0)
            return XDP_ABORTED;
    }
    *sent += 1;
    return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
