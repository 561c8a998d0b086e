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

/* The reply's IP and TCP headers, contiguous as they go into the packet,
 * so that one store writes both (the IPv4 header ends where the IPv6 one
 * does, see struct tcp_segment). */
struct ew_synack {
    union {
        struct {
            __u8 ip_pad[sizeof(struct ipv6hdr) - sizeof(struct iphdr)];
            struct iphdr ip;
        };
        struct ipv6hdr ip6;
    };
    struct ew_synack_tcp tcp;
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

/* The SYN's IP header, then its TCP header with options, copied out of the
 * packet (the cookie helper wants the TCP header and options in one piece),
 * and a walk over its options, one option per bpf_loop step (a plain loop's
 * paths explode the verifier). It lives in a per-CPU map value, not on the
 * stack: the copy's length and the walk's index are variables, which the
 * verifier allows on the stack only with CAP_PERFMON. */
struct option_walk {
    union {
        struct {
            __u8 ip_pad[sizeof(struct ipv6hdr) - sizeof(struct iphdr)];
            struct iphdr ip;
        };
        struct ipv6hdr ip6;
    };
    __u32 words[EW_TCP_HEADER_COPY_WORDS];
    __u32 length;           /* header bytes, options included */
    __u32 at;               /* offset of the next option */
    struct syn_options found;
};

_Static_assert(__builtin_offsetof(struct option_walk, words) == sizeof(struct ipv6hdr) &&
               __builtin_offsetof(struct option_walk, ip) + sizeof(struct iphdr) == sizeof(struct ipv6hdr),
               "the IP headers end where the TCP header starts");
_Static_assert(__builtin_offsetof(struct ew_synack, tcp) == sizeof(struct ipv6hdr) &&
               __builtin_offsetof(struct ew_synack, ip) + sizeof(struct iphdr) == sizeof(struct ipv6hdr),
               "the reply's IP headers end where its TCP header starts");

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

/* The option words of the two layouts almost every SYN has, as they come
 * (first byte first, whatever the host's order). */
#define EW_OPT_WORD(a, b, c, d) bpf_htonl(((__u32)(a) << 24) | ((__u32)(b) << 16) | ((__u32)(c) << 8) | (d))

/* What the SYN's options ask for, in w->found. Without the walk for the
 * layouts almost every SYN has, with the walk's result: no options; the MSS
 * alone; and Linux's MSS, SACK-permitted, timestamps, NOP, window scale. */
static __always_inline void find_syn_options(struct option_walk *w, __u32 tcp_len)
{
    __u32 zero = 0;

    __builtin_memset(&w->found, 0, sizeof(w->found));
    if (tcp_len == sizeof(struct tcphdr))
        return;
    if ((w->words[5] & EW_OPT_WORD(0xff, 0xff, 0, 0)) == EW_OPT_WORD(TCP_OPT_MSS, TCP_OPT_MSS_LEN, 0, 0)) {
        if (tcp_len == sizeof(struct tcphdr) + 4)
            return;
        if (tcp_len == sizeof(struct tcphdr) + 20 &&
            w->words[6] == EW_OPT_WORD(TCP_OPT_SACK_PERM, TCP_OPT_SACK_PERM_LEN, TCP_OPT_TIMESTAMP,
                                       TCP_OPT_TIMESTAMP_LEN) &&
            (w->words[9] & EW_OPT_WORD(0xff, 0xff, 0xff, 0)) ==
                EW_OPT_WORD(TCP_OPT_NOP, TCP_OPT_WSCALE, TCP_OPT_WSCALE_LEN, 0)) {
            __u8 wscale = ((const __u8 *)w->words)[39];

            w->found.sack = 1;
            w->found.timestamps = 1;
            w->found.tsval = w->words[7];
            w->found.window_scaling = 1;
            w->found.wscale = wscale < TCP_OPT_WSCALE_MAX ? wscale : TCP_OPT_WSCALE_MAX;
            return;
        }
    }
    w->length = tcp_len;
    w->at = sizeof(struct tcphdr);
    bpf_loop(40, walk_one_option, &zero, 0);
}

/* The SYN-ACK's options after the MSS; returns the TCP header length. The
 * timestamp value carries what the cookie cannot (kernel and synproxy
 * format): low 4 bits the client's window scale or 0xf for none, bit 4
 * SACK; the rest is the millisecond clock. The coarse clock (a tick, at
 * most 4 ms) serves: the value's low 6 bits are not the clock's anyway,
 * and synproxy only echoes it, as the client does. */
static __always_inline __u32 synack_options(struct ew_synack_tcp *tcp, const struct syn_options *o)
{
    __u32 tsval;

    if (!o->timestamps)
        return EW_SYNACK_TCP_LEN;
    tsval = (__u32)(bpf_ktime_get_coarse_ns() / 1000000) & ~0x3fU;
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

/* The internet checksum, computed here rather than by bpf_csum_diff: the
 * headers are a few words long, and the sum of 32-bit words in memory order,
 * folded, is the sum of their 16-bit halves (RFC 1071), stored as it comes
 * out, in either byte order. */
static __always_inline __u16 fold_checksum(__u64 sum)
{
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

static __always_inline __u64 sum_words(const __u32 *words, __u32 count)
{
    __u64 sum = 0;

#pragma unroll
    for (__u32 i = 0; i < EW_SYNACK_TCP_LEN_TS / 4; i++)
        if (i < count)
            sum += words[i];
    return sum;
}

/* Turns the SYN in `ctx` into the SYN-ACK that answers it with a cookie,
 * ready for XDP_TX: addresses and ports swapped, everything after the TCP
 * header cut off. Returns ANSWER_SYN_COOKIE, or DROP_BAD_COOKIE for a SYN
 * that cannot be answered (IPv6 extension headers, options cut short, or
 * refused by the cookie helper). The body of the global function
 * ew_answer_syn_cookie (edgewarden.bpf.c).
 *
 * Per SYN: two reads (the IP and TCP headers in one, when nothing lies
 * between them, and the options), the cookie, one write of the reply's IP
 * and TCP headers, and a tail adjustment only when the SYN's length differs
 * from the reply's (the flood's MSS-only SYN and Linux's SYN are as long as
 * their answers). */
static __always_inline __u32 build_syn_cookie_answer(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset,
                                                     __u32 family)
{
    __u32 zero = 0;
    struct option_walk *w = bpf_map_lookup_elem(&ew_syn_scratch, &zero);
    const struct tcphdr *syn;
    struct ew_synack reply = {};
    struct ew_synack_tcp *tcp = &reply.tcp;
    __u32 tcp_len, ip_len, doff, new_len, reply_len;
    __u8 mac[2][ETH_ALEN];
    void *data, *data_end;
    __s64 value;
    __u64 sum;
    int delta;

    if (!w)
        return EW_REASON_DROP_BAD_COOKIE;
    syn = (const struct tcphdr *)w->words;
    if (family == EW_FAMILY_IPV4) {
        ip_len = sizeof(struct iphdr);
        if (l4_offset == l3_offset + sizeof(struct iphdr)) {
            if (bpf_xdp_load_bytes(ctx, l3_offset, &w->ip, sizeof(struct iphdr) + sizeof(struct tcphdr)))
                return EW_REASON_DROP_BAD_COOKIE;
        } else if (bpf_xdp_load_bytes(ctx, l3_offset, &w->ip, sizeof(struct iphdr)) ||    /* IP options */
                   bpf_xdp_load_bytes(ctx, l4_offset, w->words, sizeof(struct tcphdr))) {
            return EW_REASON_DROP_BAD_COOKIE;
        }
    } else {
        ip_len = sizeof(struct ipv6hdr);
        if (l4_offset != l3_offset + sizeof(struct ipv6hdr) ||      /* extension headers */
            bpf_xdp_load_bytes(ctx, l3_offset, &w->ip6, sizeof(struct ipv6hdr) + sizeof(struct tcphdr)) ||
            w->ip6.nexthdr != IPPROTO_TCP)
            return EW_REASON_DROP_BAD_COOKIE;
    }
    doff = ((const __u8 *)w->words)[12] >> 4;
    tcp_len = doff * 4;
    if (tcp_len < sizeof(struct tcphdr))
        return EW_REASON_DROP_BAD_COOKIE;
    if (tcp_len > sizeof(struct tcphdr) &&
        bpf_xdp_load_bytes(ctx, l4_offset + sizeof(struct tcphdr), &w->words[5], tcp_len - sizeof(struct tcphdr)))
        return EW_REASON_DROP_BAD_COOKIE;

    if (family == EW_FAMILY_IPV4)
        value = bpf_tcp_raw_gen_syncookie_ipv4(&w->ip, (struct tcphdr *)w->words, tcp_len);
    else
        value = bpf_tcp_raw_gen_syncookie_ipv6(&w->ip6, (struct tcphdr *)w->words, tcp_len);
    if (value < 0)
        return EW_REASON_DROP_BAD_COOKIE;

    tcp->source = syn->dest;
    tcp->dest = syn->source;
    tcp->seq = bpf_htonl((__u32)value);
    tcp->ack_seq = bpf_htonl(bpf_ntohl(syn->seq) + 1);
    tcp->flags = TCP_FLAG_SYN | TCP_FLAG_ACK;
    tcp->options[0] = bpf_htonl((2 << 24) | (4 << 16) | (__u16)(value >> 32));   /* kind 2, length 4, MSS */
    find_syn_options(w, tcp_len);
    reply_len = synack_options(tcp, &w->found);
    tcp->doff_reserved = (reply_len / 4) << 4;

    /* The reply's IP header, and the TCP checksum over the pseudo header
     * (the reply's addresses, its protocol and TCP length). */
    if (family == EW_FAMILY_IPV4) {
        reply.ip.version = 4;
        reply.ip.ihl = 5;
        reply.ip.tot_len = bpf_htons(sizeof(struct iphdr) + reply_len);
        reply.ip.frag_off = bpf_htons(IPV4_DONT_FRAGMENT);
        reply.ip.ttl = EW_SYNACK_TTL;
        reply.ip.protocol = IPPROTO_TCP;
        reply.ip.saddr = w->ip.daddr;
        reply.ip.daddr = w->ip.saddr;
        reply.ip.check = fold_checksum(sum_words((const __u32 *)&reply.ip, sizeof(struct iphdr) / 4));
        sum = (__u64)reply.ip.saddr + reply.ip.daddr + bpf_htons(IPPROTO_TCP) + bpf_htons(reply_len);
    } else {
        *(__be32 *)&reply.ip6 = bpf_htonl(0x60000000);      /* version 6, no traffic class or flow label */
        reply.ip6.payload_len = bpf_htons(reply_len);
        reply.ip6.nexthdr = IPPROTO_TCP;
        reply.ip6.hop_limit = EW_SYNACK_TTL;
        reply.ip6.saddr = w->ip6.daddr;
        reply.ip6.daddr = w->ip6.saddr;
        sum = sum_words((const __u32 *)&reply.ip6.saddr, 2 * sizeof(struct in6_addr) / 4) +
              bpf_htonl(reply_len) + bpf_htonl(IPPROTO_TCP);
    }
    tcp->check = fold_checksum(sum + sum_words((const __u32 *)tcp, reply_len / 4));

    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (data + sizeof(struct ethhdr) > data_end)
        return EW_REASON_DROP_BAD_COOKIE;
    __builtin_memcpy(mac[0], ((struct ethhdr *)data)->h_source, ETH_ALEN);
    __builtin_memcpy(mac[1], ((struct ethhdr *)data)->h_dest, ETH_ALEN);
    /* Resize to exactly the reply (every packet pointer is stale after
     * that), unless it is already. */
    new_len = l3_offset + ip_len + reply_len;
    delta = (int)new_len - (int)bpf_xdp_get_buff_len(ctx);
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        return EW_REASON_DROP_BAD_COOKIE;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;

    if ((void *)(eth + 1) > data_end)
        return EW_REASON_DROP_BAD_COOKIE;
    __builtin_memcpy(eth->h_dest, mac[0], ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac[1], ETH_ALEN);
    /* The headers go in by offset (bpf_xdp_store_bytes), as they came out,
     * IP and TCP in one write. */
    if (family == EW_FAMILY_IPV4) {
        if (reply_len == EW_SYNACK_TCP_LEN_TS ?
            bpf_xdp_store_bytes(ctx, l3_offset, &reply.ip, sizeof(struct iphdr) + EW_SYNACK_TCP_LEN_TS) :
            bpf_xdp_store_bytes(ctx, l3_offset, &reply.ip, sizeof(struct iphdr) + EW_SYNACK_TCP_LEN))
            return EW_REASON_DROP_BAD_COOKIE;
    } else {
        if (reply_len == EW_SYNACK_TCP_LEN_TS ?
            bpf_xdp_store_bytes(ctx, l3_offset, &reply.ip6, sizeof(struct ipv6hdr) + EW_SYNACK_TCP_LEN_TS) :
            bpf_xdp_store_bytes(ctx, l3_offset, &reply.ip6, sizeof(struct ipv6hdr) + EW_SYNACK_TCP_LEN))
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
