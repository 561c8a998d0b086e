/* TCP state defences per tenant (ew_flood_policy.flags):
 *
 *  - SYN cookies (EW_FLOOD_SYN_COOKIES): a SYN is answered from XDP with a
 *    SYN-ACK whose sequence number is a kernel SYN cookie, so spoofed SYNs
 *    never reach a server's backlog. Any other segment must belong to a
 *    known connection or be an ACK carrying a valid cookie; the latter is
 *    passed to the kernel, where the nftables synproxy rule the agent
 *    installs (agent/datapath/netfilter.py) checks the same cookie and opens
 *    the connection to the server. The cookie SYN-ACK carries window 0, as
 *    synproxy's own does (the client waits for synproxy's window update),
 *    and the options synproxy's would: the MSS from the cookie and, for a
 *    client that sent timestamps, window scaling and SACK encoded in the
 *    timestamp (see synack_options). Without timestamps there is nowhere to
 *    keep them, and the connection runs without.
 *  - SYN-ACKs with no connection (EW_FLOOD_SYN_ACK_DROP / _TRACK): dropped
 *    always, or unless conntrack knows the connection they answer.
 *
 * "Known connection" means a confirmed conntrack entry in the namespace of
 * the interface the packet arrived on. */
#ifndef EW_TCP_STATE_H
#define EW_TCP_STATE_H

#include "parse.h"

/* Only the field read here; CO-RE finds its offset in the running kernel. */
struct nf_conn {
    unsigned long status;
} __attribute__((preserve_access_index));

#define EW_IPS_CONFIRMED (1UL << 3)

/* struct bpf_ct_opts of net/netfilter/nf_conntrack_bpf.c (NF_BPF_CT_OPTS_SZ). */
struct ew_ct_opts {
    __s32 netns_id;
    __s32 error;
    __u8 l4proto;
    __u8 dir;
    __u16 ct_zone_id;
    __u8 ct_zone_dir;
    __u8 reserved[3];
};

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
                                         struct ew_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

/* Copies of the packet's IP and TCP headers, taken again from offsets: the
 * state checks are global functions (verified once, not once per path of
 * the caller), and those cannot take packet pointers. */
struct tcp_segment {
    struct tcphdr tcp;
    union {
        struct iphdr ip;
        struct ipv6hdr ip6;
    };
};

/* Offsets from the parser are small (L3 at most 14 + 2 VLAN tags, L4 at most
 * that plus a bounded IPv6 extension chain); masks, unlike range checks the
 * compiler may fold away, show the verifier the bound. */
#define EW_L3_OFFSET_MASK 0x1f
#define EW_L4_OFFSET_MASK 0x3fff

static __always_inline int copy_segment(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family,
                                        struct tcp_segment *seg)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    void *l3, *l4;

    l3 = data + (l3_offset & EW_L3_OFFSET_MASK);
    l4 = data + (l4_offset & EW_L4_OFFSET_MASK);
    if (l4 + sizeof(struct tcphdr) > data_end)
        return -1;
    __builtin_memcpy(&seg->tcp, l4, sizeof(struct tcphdr));
    if (family == EW_FAMILY_IPV4) {
        if (l3 + sizeof(struct iphdr) > data_end)
            return -1;
        __builtin_memcpy(&seg->ip, l3, sizeof(struct iphdr));
    } else {
        if (l3 + sizeof(struct ipv6hdr) > data_end)
            return -1;
        __builtin_memcpy(&seg->ip6, l3, sizeof(struct ipv6hdr));
    }
    return 0;
}

/* The TCP segment belongs to a confirmed conntrack connection (either direction). */
static __always_inline int tcp_connection_known(struct xdp_md *ctx, const struct tcp_segment *seg, __u32 family)
{
    struct ew_ct_opts opts = { .netns_id = BPF_F_CURRENT_NETNS, .l4proto = IPPROTO_TCP };
    struct bpf_sock_tuple tuple = {};
    struct nf_conn *ct;
    int known;

    if (family == EW_FAMILY_IPV4) {
        tuple.ipv4.saddr = seg->ip.saddr;
        tuple.ipv4.daddr = seg->ip.daddr;
        tuple.ipv4.sport = seg->tcp.source;
        tuple.ipv4.dport = seg->tcp.dest;
        ct = bpf_xdp_ct_lookup(ctx, &tuple, sizeof(tuple.ipv4), &opts, sizeof(opts));
    } else {
        __builtin_memcpy(tuple.ipv6.saddr, &seg->ip6.saddr, 16);
        __builtin_memcpy(tuple.ipv6.daddr, &seg->ip6.daddr, 16);
        tuple.ipv6.sport = seg->tcp.source;
        tuple.ipv6.dport = seg->tcp.dest;
        ct = bpf_xdp_ct_lookup(ctx, &tuple, sizeof(tuple.ipv6), &opts, sizeof(opts));
    }
    if (!ct)
        return 0;
    known = (ct->status & EW_IPS_CONFIRMED) != 0;
    bpf_ct_release(ct);
    return known;
}

/* The ACK acknowledges a cookie this kernel issued (within its lifetime). */
static __always_inline int ack_has_valid_cookie(struct tcp_segment *seg, __u32 family)
{
    if (family == EW_FAMILY_IPV4)
        return bpf_tcp_raw_check_syncookie_ipv4(&seg->ip, &seg->tcp) == 0;
    return bpf_tcp_raw_check_syncookie_ipv6(&seg->ip6, &seg->tcp) == 0;
}

static __always_inline int is_syn_ack(__u8 flags)
{
    return (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK);
}

static __always_inline int wants_syn_cookie(const struct packet_facts *f, __u32 policy_flags)
{
    return (policy_flags & EW_FLOOD_SYN_COOKIES) && f->l4_parsed && f->l4_proto == IPPROTO_TCP &&
           (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* The drops of the TCP state policies that need kernel state (conntrack,
 * the cookie secret) for a parsed TCP segment, or PASS_ALLOWED. A SYN in
 * cookie mode passes here; it is answered after the rate limits. */
__noinline __u32 ew_tcp_state_verdict(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family,
                                      __u32 policy_flags)
{
    struct tcp_segment seg;
    __u8 flags;

    if (!ctx || copy_segment(ctx, l3_offset, l4_offset, family, &seg) < 0)
        return EW_REASON_DROP_MALFORMED;    /* the caller parsed it: cannot happen */
    flags = ((__u8 *)&seg.tcp)[13];
    if (is_syn_ack(flags))      /* syn_ack = "drop" is decided inline, in flood_verdict */
        return (policy_flags & EW_FLOOD_SYN_ACK_TRACK) && !tcp_connection_known(ctx, &seg, family) ?
               EW_REASON_DROP_SYN_ACK : EW_REASON_PASS_ALLOWED;
    if (!(policy_flags & EW_FLOOD_SYN_COOKIES))
        return EW_REASON_PASS_ALLOWED;
    if (flags & TCP_FLAG_SYN)       /* a SYN with RST or FIN cannot be answered */
        return (flags & (TCP_FLAG_RST | TCP_FLAG_FIN)) ? EW_REASON_DROP_BAD_COOKIE : EW_REASON_PASS_ALLOWED;
    if (tcp_connection_known(ctx, &seg, family))
        return EW_REASON_PASS_ALLOWED;
    if ((flags & TCP_FLAG_ACK) && !(flags & TCP_FLAG_RST) && ack_has_valid_cookie(&seg, family))
        return EW_REASON_PASS_ALLOWED;
    return EW_REASON_DROP_BAD_COOKIE;
}

static __always_inline __u32 tcp_state_verdict(struct xdp_md *ctx, const struct packet_facts *f, __u32 policy_flags)
{
    void *data = (void *)(long)ctx->data;

    return ew_tcp_state_verdict(ctx, f->l3 - data, f->l4_offset, f->family, policy_flags);
}

/* ---- building the cookie SYN-ACK ---------------------------------------- */

struct ew_synack_tcp {
    __be16 source;
    __be16 dest;
    __be32 seq;
    __be32 ack_seq;
    __u8 doff_reserved;
    __u8 flags;
    __be16 window;
    __be16 check;
    __be16 urg_ptr;
    __be32 options[5];      /* MSS; with timestamps: SACK-perm/NOPs + TS kind, TS value, TS echo, WS/NOPs */
};

/* What the SYN's options ask for, as far as a cookie can remember it. */
struct syn_options {
    __u8 timestamps;
    __u8 sack;
    __u8 window_scaling;
    __u8 wscale;
    __be32 tsval;
};

#define EW_TCP_HEADER_COPY_WORDS 16     /* 15 words of header and options, and a spare one */
#define EW_TCP_HEADER_BYTES_MASK 63     /* so that masked option indexes stay inside the copy */

/* The SYN's header, copied out of the packet, and a walk over its options,
 * one option per bpf_loop step (a plain loop's paths explode the verifier). */
struct option_walk {
    __u32 words[EW_TCP_HEADER_COPY_WORDS];
    __u32 length;           /* header bytes, options included */
    __u32 at;               /* offset of the next option */
    struct syn_options found;
};

static long walk_one_option(__u32 index, void *context)
{
    struct option_walk *w = context;
    const __u8 *header = (const __u8 *)w->words;
    __u32 i = w->at;
    __u8 kind, size;

    if (i >= w->length || i >= 60)
        return 1;
    kind = header[i & EW_TCP_HEADER_BYTES_MASK];
    if (kind == 0)                          /* end of options */
        return 1;
    if (kind == 1) {                        /* NOP */
        w->at = i + 1;
        return 0;
    }
    if (i + 1 >= w->length)
        return 1;
    size = header[(i + 1) & EW_TCP_HEADER_BYTES_MASK];
    if (size < 2 || i + size > w->length)
        return 1;
    if (kind == 3 && size == 3) {
        __u8 wscale = header[(i + 2) & EW_TCP_HEADER_BYTES_MASK];

        w->found.window_scaling = 1;
        w->found.wscale = wscale < 14 ? wscale : 14;
    } else if (kind == 4 && size == 2) {
        w->found.sack = 1;
    } else if (kind == 8 && size == 10) {
        w->found.timestamps = 1;
        w->found.tsval = (__u32)header[(i + 2) & EW_TCP_HEADER_BYTES_MASK] |
                         (__u32)header[(i + 3) & EW_TCP_HEADER_BYTES_MASK] << 8 |
                         (__u32)header[(i + 4) & EW_TCP_HEADER_BYTES_MASK] << 16 |
                         (__u32)header[(i + 5) & EW_TCP_HEADER_BYTES_MASK] << 24;   /* bytes as they came */
    }
    w->at = i + size;
    return 0;
}

/* The SYN-ACK's options after the MSS; returns the TCP header length. The
 * timestamp value carries what the cookie cannot (kernel and synproxy
 * format): low 4 bits the client's window scale or 0xf for none, bit 4
 * SACK; the rest is the millisecond clock. */
static __always_inline __u32 synack_options(struct ew_synack_tcp *tcp, const struct syn_options *o)
{
    __u32 tsval;

    if (!o->timestamps)
        return EW_SYNACK_TCP_LEN;
    tsval = (__u32)(bpf_ktime_get_ns() / 1000000) & ~0x3fU;
    tsval |= o->window_scaling ? o->wscale : 0xf;
    if (o->sack)
        tsval |= 1 << 4;
    tcp->options[1] = bpf_htonl(o->sack ? (4 << 24) | (2 << 16) | (8 << 8) | 10
                                        : (1 << 24) | (1 << 16) | (8 << 8) | 10);
    tcp->options[2] = bpf_htonl(tsval);
    tcp->options[3] = o->tsval;             /* echo the client's, as it came */
    tcp->options[4] = o->window_scaling ? bpf_htonl((1 << 24) | (3 << 16) | (3 << 8) | EW_SYNPROXY_WSCALE)
                                        : bpf_htonl(0x01010101);
    return EW_SYNACK_TCP_LEN_TS;
}

struct ew_pseudo_v4 {
    __be32 saddr;
    __be32 daddr;
    __u8 zero;
    __u8 protocol;
    __be16 length;
};

struct ew_pseudo_v6 {
    struct in6_addr saddr;
    struct in6_addr daddr;
    __be32 length;
    __u8 zero[3];
    __u8 next_header;
};

static __always_inline __u16 fold_checksum(__s64 sum)
{
    __u32 s = (__u32)sum;

    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)~s;
}

#define EW_TCP_MAX_HEADER_WORDS 15

/* Turns the SYN in `ctx` into the SYN-ACK that answers it with a cookie,
 * ready for XDP_TX: addresses and ports swapped, everything after the TCP
 * header cut off. Returns ANSWER_SYN_COOKIE, or DROP_BAD_COOKIE for a SYN
 * that cannot be answered (IPv6 extension headers, options cut short, or
 * refused by the cookie helper). */
__noinline __u32 ew_answer_syn_cookie(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family)
{
    struct option_walk walk = {};
    __u32 *words = walk.words;
    const struct tcphdr *syn = (const struct tcphdr *)walk.words;
    struct ew_synack_tcp tcp = {};
    struct tcp_segment seg;
    const __u32 *options;
    __u32 tcp_len, ip_len, doff, new_len, reply_len;
    __u8 mac[2][ETH_ALEN];
    void *data, *data_end;
    __s64 value, sum;

    if (!ctx || copy_segment(ctx, l3_offset, l4_offset, family, &seg) < 0)
        return EW_REASON_DROP_BAD_COOKIE;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    options = data + (l4_offset & EW_L4_OFFSET_MASK);
    doff = ((const __u8 *)&seg.tcp)[12] >> 4;
    for (int i = 0; i < EW_TCP_MAX_HEADER_WORDS; i++) {     /* the header with its options (a bounded loop) */
        if (i >= doff)
            break;
        if ((void *)(options + i + 1) > data_end)
            return EW_REASON_DROP_BAD_COOKIE;
        words[i] = options[i];
    }
    tcp_len = doff * 4;
    if (tcp_len < sizeof(struct tcphdr))
        return EW_REASON_DROP_BAD_COOKIE;

    if (family == EW_FAMILY_IPV4) {
        value = bpf_tcp_raw_gen_syncookie_ipv4(&seg.ip, (struct tcphdr *)words, tcp_len);
        ip_len = sizeof(struct iphdr);
    } else {
        if (seg.ip6.nexthdr != IPPROTO_TCP)
            return EW_REASON_DROP_BAD_COOKIE;
        value = bpf_tcp_raw_gen_syncookie_ipv6(&seg.ip6, (struct tcphdr *)words, tcp_len);
        ip_len = sizeof(struct ipv6hdr);
    }
    if (value < 0)
        return EW_REASON_DROP_BAD_COOKIE;

    tcp.source = syn->dest;
    tcp.dest = syn->source;
    tcp.seq = bpf_htonl((__u32)value);
    tcp.ack_seq = bpf_htonl(bpf_ntohl(syn->seq) + 1);
    tcp.flags = TCP_FLAG_SYN | TCP_FLAG_ACK;
    tcp.options[0] = bpf_htonl((2 << 24) | (4 << 16) | (__u16)(value >> 32));   /* kind 2, length 4, MSS */
    walk.length = tcp_len;
    walk.at = sizeof(struct tcphdr);
    bpf_loop(40, walk_one_option, &walk, 0);
    reply_len = synack_options(&tcp, &walk.found);
    tcp.doff_reserved = (reply_len / 4) << 4;

    /* The reply's IP header, in place in seg, and the TCP checksum over the
     * pseudo header (for IPv6 its 40 bytes are the reply's addresses, the
     * length and the next header, laid over the words array, now free). */
    if (family == EW_FAMILY_IPV4) {
        struct ew_pseudo_v4 pseudo = {
            .saddr = seg.ip.daddr, .daddr = seg.ip.saddr, .protocol = IPPROTO_TCP,
            .length = bpf_htons(reply_len),
        };
        __be32 client = seg.ip.saddr;

        sum = bpf_csum_diff(NULL, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
        *(__be32 *)&seg.ip = 0;
        seg.ip.version = 4;
        seg.ip.ihl = 5;
        seg.ip.tot_len = bpf_htons(sizeof(struct iphdr) + reply_len);
        seg.ip.id = 0;
        seg.ip.frag_off = bpf_htons(0x4000);                /* DF */
        seg.ip.ttl = EW_SYNACK_TTL;
        seg.ip.protocol = IPPROTO_TCP;
        seg.ip.check = 0;
        seg.ip.saddr = seg.ip.daddr;
        seg.ip.daddr = client;
        seg.ip.check = fold_checksum(bpf_csum_diff(NULL, 0, (__be32 *)&seg.ip, sizeof(struct iphdr), 0));
    } else {
        struct ew_pseudo_v6 *pseudo = (struct ew_pseudo_v6 *)words;

        pseudo->saddr = seg.ip6.daddr;
        pseudo->daddr = seg.ip6.saddr;
        pseudo->length = bpf_htonl(reply_len);
        pseudo->zero[0] = pseudo->zero[1] = pseudo->zero[2] = 0;
        pseudo->next_header = IPPROTO_TCP;
        sum = bpf_csum_diff(NULL, 0, (__be32 *)pseudo, sizeof(*pseudo), 0);
        *(__be32 *)&seg.ip6 = bpf_htonl(0x60000000);      /* version 6, no traffic class or flow label */
        seg.ip6.payload_len = bpf_htons(reply_len);
        seg.ip6.hop_limit = EW_SYNACK_TTL;
        seg.ip6.saddr = pseudo->saddr;
        seg.ip6.daddr = pseudo->daddr;
    }
    if (reply_len == EW_SYNACK_TCP_LEN_TS)
        sum = bpf_csum_diff(NULL, 0, (__be32 *)&tcp, EW_SYNACK_TCP_LEN_TS, (__u32)sum);
    else
        sum = bpf_csum_diff(NULL, 0, (__be32 *)&tcp, EW_SYNACK_TCP_LEN, (__u32)sum);
    tcp.check = fold_checksum(sum);

    if (data + sizeof(struct ethhdr) > data_end)
        return EW_REASON_DROP_BAD_COOKIE;
    __builtin_memcpy(mac[0], ((struct ethhdr *)data)->h_source, ETH_ALEN);
    __builtin_memcpy(mac[1], ((struct ethhdr *)data)->h_dest, ETH_ALEN);
    /* Resize to exactly the reply; every packet pointer is stale after this. */
    new_len = (l3_offset & EW_L3_OFFSET_MASK) + ip_len + reply_len;
    if (bpf_xdp_adjust_tail(ctx, (int)new_len - (int)bpf_xdp_get_buff_len(ctx)))
        return EW_REASON_DROP_BAD_COOKIE;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    void *l3 = data + (l3_offset & EW_L3_OFFSET_MASK);

    if ((void *)(eth + 1) > data_end)
        return EW_REASON_DROP_BAD_COOKIE;
    __builtin_memcpy(eth->h_dest, mac[0], ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac[1], ETH_ALEN);
    if (family == EW_FAMILY_IPV4) {
        if (l3 + sizeof(struct iphdr) + EW_SYNACK_TCP_LEN > data_end)
            return EW_REASON_DROP_BAD_COOKIE;
        __builtin_memcpy(l3, &seg.ip, sizeof(struct iphdr));
        l3 += sizeof(struct iphdr);
    } else {
        if (l3 + sizeof(struct ipv6hdr) + EW_SYNACK_TCP_LEN > data_end)
            return EW_REASON_DROP_BAD_COOKIE;
        __builtin_memcpy(l3, &seg.ip6, sizeof(struct ipv6hdr));
        l3 += sizeof(struct ipv6hdr);
    }
    if (reply_len == EW_SYNACK_TCP_LEN_TS) {
        if (l3 + EW_SYNACK_TCP_LEN_TS > data_end)
            return EW_REASON_DROP_BAD_COOKIE;
        __builtin_memcpy(l3, &tcp, EW_SYNACK_TCP_LEN_TS);
    } else {
        __builtin_memcpy(l3, &tcp, EW_SYNACK_TCP_LEN);
    }
    return EW_REASON_ANSWER_SYN_COOKIE;
}

/* Fragmented and multi-buffer SYNs are not answered. */
static __always_inline __u32 answer_syn_with_cookie(struct xdp_md *ctx, const struct packet_facts *f)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;

    if (f->fragment != EW_NOT_FRAGMENT || f->length != (__u32)(data_end - data))
        return EW_REASON_DROP_BAD_COOKIE;
    return ew_answer_syn_cookie(ctx, f->l3 - data, f->l4_offset, f->family);
}

#endif /* EW_TCP_STATE_H */
