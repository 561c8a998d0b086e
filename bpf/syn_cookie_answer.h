/* The cookie SYN-ACK: turns a SYN into the SYN-ACK that answers it from
 * XDP (XDP_TX) with a kernel SYN cookie as its sequence number (tcp_state.h
 * decides when). The SYN-ACK carries window 0, as synproxy's own does (the
 * client waits for synproxy's window update), and the options synproxy's
 * would: the MSS from the cookie and, for a client that sent timestamps,
 * window scaling and SACK encoded in the timestamp (see synack_options).
 * Without timestamps there is nowhere to keep them, and the connection runs
 * without. */
#ifndef EW_SYN_COOKIE_ANSWER_H
#define EW_SYN_COOKIE_ANSWER_H

#include "tcp_segment.h"

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
 * one option per bpf_loop step (a plain loop's paths explode the verifier).
 * It lives in a per-CPU map value, not on the stack: the walk indexes it by
 * a variable, which the verifier allows on the stack only with CAP_PERFMON. */
struct option_walk {
    __u32 words[EW_TCP_HEADER_COPY_WORDS];
    __u32 length;           /* header bytes, options included */
    __u32 at;               /* offset of the next option */
    struct syn_options found;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct option_walk);
} ew_syn_scratch SEC(".maps");

/* bpf_loop hands a callback only stack memory, so each step finds the walk
 * in the map itself. */
static long walk_one_option(__u32 index, void *context)
{
    __u32 zero = 0;
    struct option_walk *w = bpf_map_lookup_elem(&ew_syn_scratch, &zero);
    const __u8 *header;
    __u32 i;
    __u8 kind, size;

    if (!w)
        return 1;
    header = (const __u8 *)w->words;
    i = w->at;

    if (i >= w->length || i >= TCP_MAX_HEADER_BYTES)
        return 1;
    kind = header[i & EW_TCP_HEADER_BYTES_MASK];
    if (kind == TCP_OPT_EOL)
        return 1;
    if (kind == TCP_OPT_NOP) {
        w->at = i + 1;
        return 0;
    }
    if (i + 1 >= w->length)
        return 1;
    size = header[(i + 1) & EW_TCP_HEADER_BYTES_MASK];
    if (size < 2 || i + size > w->length)
        return 1;
    if (kind == TCP_OPT_WSCALE && size == TCP_OPT_WSCALE_LEN) {
        __u8 wscale = header[(i + 2) & EW_TCP_HEADER_BYTES_MASK];

        w->found.window_scaling = 1;
        w->found.wscale = wscale < TCP_OPT_WSCALE_MAX ? wscale : TCP_OPT_WSCALE_MAX;
    } else if (kind == TCP_OPT_SACK_PERM && size == TCP_OPT_SACK_PERM_LEN) {
        w->found.sack = 1;
    } else if (kind == TCP_OPT_TIMESTAMP && size == TCP_OPT_TIMESTAMP_LEN) {
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
 * refused by the cookie helper). The body of the global function
 * ew_answer_syn_cookie (edgewarden.bpf.c). */
static __always_inline __u32 build_syn_cookie_answer(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset,
                                                     __u32 family)
{
    __u32 zero = 0;
    struct option_walk *walk = bpf_map_lookup_elem(&ew_syn_scratch, &zero);
    __u32 words[EW_TCP_HEADER_COPY_WORDS] = {};
    const struct tcphdr *syn = (const struct tcphdr *)words;
    struct ew_synack_tcp tcp = {};
    struct tcp_segment seg = {};
    __u32 tcp_len, ip_len, doff, new_len, reply_len;
    __u8 mac[2][ETH_ALEN];
    void *data, *data_end;
    __s64 value, sum;

    if (!walk || copy_segment(ctx, l3_offset, l4_offset, family, &seg) < 0)
        return EW_REASON_DROP_BAD_COOKIE;
    doff = ((const __u8 *)&seg.tcp)[12] >> 4;
    /* The fixed header came with seg; the option words are copied one by
     * one, each to a constant place on the stack (a variable one needs
     * CAP_PERFMON). */
    __builtin_memcpy(words, &seg.tcp, sizeof(struct tcphdr));
#define EW_COPY_OPTION_WORD(i)                                                          \
    if (doff > (i) && bpf_xdp_load_bytes(ctx, l4_offset + (i) * 4, &words[(i)], 4))    \
        return EW_REASON_DROP_BAD_COOKIE;
    EW_COPY_OPTION_WORD(5) EW_COPY_OPTION_WORD(6) EW_COPY_OPTION_WORD(7) EW_COPY_OPTION_WORD(8)
    EW_COPY_OPTION_WORD(9) EW_COPY_OPTION_WORD(10) EW_COPY_OPTION_WORD(11) EW_COPY_OPTION_WORD(12)
    EW_COPY_OPTION_WORD(13) EW_COPY_OPTION_WORD(14)
#undef EW_COPY_OPTION_WORD
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
    __builtin_memcpy(walk->words, words, sizeof(words));
    walk->length = tcp_len;
    walk->at = 0;
    __builtin_memset(&walk->found, 0, sizeof(walk->found));
    walk->at = sizeof(struct tcphdr);
    bpf_loop(40, walk_one_option, &zero, 0);
    reply_len = synack_options(&tcp, &walk->found);
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
        seg.ip.frag_off = bpf_htons(IPV4_DONT_FRAGMENT);
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

    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (data + sizeof(struct ethhdr) > data_end)
        return EW_REASON_DROP_BAD_COOKIE;
    __builtin_memcpy(mac[0], ((struct ethhdr *)data)->h_source, ETH_ALEN);
    __builtin_memcpy(mac[1], ((struct ethhdr *)data)->h_dest, ETH_ALEN);
    /* Resize to exactly the reply; every packet pointer is stale after this. */
    new_len = l3_offset + ip_len + reply_len;
    if (bpf_xdp_adjust_tail(ctx, (int)new_len - (int)bpf_xdp_get_buff_len(ctx)))
        return EW_REASON_DROP_BAD_COOKIE;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;

    if ((void *)(eth + 1) > data_end)
        return EW_REASON_DROP_BAD_COOKIE;
    __builtin_memcpy(eth->h_dest, mac[0], ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac[1], ETH_ALEN);
    /* The headers go in by offset (bpf_xdp_store_bytes), as they came out. */
    if (family == EW_FAMILY_IPV4) {
        if (bpf_xdp_store_bytes(ctx, l3_offset, &seg.ip, sizeof(struct iphdr)))
            return EW_REASON_DROP_BAD_COOKIE;
    } else {
        if (bpf_xdp_store_bytes(ctx, l3_offset, &seg.ip6, sizeof(struct ipv6hdr)))
            return EW_REASON_DROP_BAD_COOKIE;
    }
    if (reply_len == EW_SYNACK_TCP_LEN_TS) {
        if (bpf_xdp_store_bytes(ctx, l3_offset + ip_len, &tcp, EW_SYNACK_TCP_LEN_TS))
            return EW_REASON_DROP_BAD_COOKIE;
    } else {
        if (bpf_xdp_store_bytes(ctx, l3_offset + ip_len, &tcp, EW_SYNACK_TCP_LEN))
            return EW_REASON_DROP_BAD_COOKIE;
    }
    return EW_REASON_ANSWER_SYN_COOKIE;
}

/* Defined in the entry file (see tcp_state.h). */
__u32 ew_answer_syn_cookie(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family);

/* Fragmented SYNs are not answered. (A multi-buffer SYN is: the answer is
 * read and written by offset, and the tail adjustment drops the fragments.) */
static __always_inline __u32 answer_syn_with_cookie(struct xdp_md *ctx, const struct packet_facts *f)
{
    if (f->fragment != EW_NOT_FRAGMENT)
        return EW_REASON_DROP_BAD_COOKIE;
    return ew_answer_syn_cookie(ctx, f->l3_offset, f->l4_offset, f->family);
}

#endif /* EW_SYN_COOKIE_ANSWER_H */
