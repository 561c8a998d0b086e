/* The cookie SYN-ACK: turns a SYN into the SYN-ACK that answers it from
 * XDP (XDP_TX) with a kernel SYN cookie as its sequence number (tcp_state.h
 * decides when). The SYN-ACK carries window 0, as synproxy's own does (the
 * client waits for synproxy's window update), and the options synproxy's
 * would: the MSS from the cookie and, for a client that sent timestamps,
 * window scaling and SACK encoded in the timestamp (see fill_reply).
 * Without timestamps there is nowhere to keep them, and the connection runs
 * without. */
#ifndef EW_SYN_COOKIE_ANSWER_H
#define EW_SYN_COOKIE_ANSWER_H

#include "tcp_segment.h"

/* The reply's IP and TCP headers, as words in network order: the TCP
 * header at word EW_SYNACK_TCP_WORD, the IP header just before it (an IPv4
 * one from word EW_SYNACK_IPV4_WORD, an IPv6 one from word 0). Fixed
 * places: a place chosen by the family would be pointer arithmetic that the
 * verifier refuses without CAP_PERFMON. */
#define EW_SYNACK_TCP_WORD (sizeof(struct ipv6hdr) / 4)
#define EW_SYNACK_IPV4_WORD ((sizeof(struct ipv6hdr) - sizeof(struct iphdr)) / 4)
#define EW_SYNACK_MAX_WORDS (EW_SYNACK_TCP_WORD + EW_SYNACK_TCP_LEN_TS / 4)

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

/* Folds a sum of host-order words into the internet checksum (RFC 1071:
 * the ones' complement of the ones' complement sum of 16-bit words), host
 * order. */
static __always_inline __u32 fold_checksum(__u64 sum)
{
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u32)~sum & 0xffff;
}

/* The reply's IP and TCP headers, in out[] (see EW_SYNACK_TCP_WORD), for a
 * SYN whose IP header is `ip` (struct iphdr or struct ipv6hdr, by family)
 * and TCP header `syn`, wherever they are (in the packet or in the copy),
 * and the cookie `value` (bpf_tcp_raw_gen_syncookie_*: the cookie, and the
 * MSS above bit 32). Returns the reply's TCP length.
 *
 * Every word is made in a register, in host order, summed for the
 * checksums there and stored once, whole: no header built field by field
 * on the stack and read back as words (each such read waits for the
 * narrower stores before it).
 *
 * The TCP options: the MSS from the cookie and, for a client that sent
 * timestamps, SACK-permitted (or 2 NOPs), the timestamp and synproxy's
 * window scale (or 4 NOPs), as synproxy's own SYN-ACK. The timestamp value
 * carries what the cookie cannot (kernel and synproxy format): low 4 bits
 * the client's window scale or 0xf for none, bit 4 SACK; the rest is the
 * millisecond clock, read coarse (a tick, at most 4 ms): its low 6 bits are
 * not the clock's anyway, and synproxy only echoes it, as the client does. */
static __always_inline __u32 fill_reply(__u32 *out, const void *ip, const struct tcphdr *syn, __s64 value,
                                        const struct syn_options *o, __u32 family)
{
    __u32 reply_len = o->timestamps ? EW_SYNACK_TCP_LEN_TS : EW_SYNACK_TCP_LEN;
    __u32 *tcp = out + EW_SYNACK_TCP_WORD;
    __u32 t0, t1, t2, t3, t5, t6 = 0, t7 = 0, t8 = 0, t9 = 0;
    __u64 sum;

    t0 = (__u32)bpf_ntohs(syn->dest) << 16 | bpf_ntohs(syn->source);
    t1 = (__u32)value;
    t2 = bpf_ntohl(syn->seq) + 1;
    t3 = (reply_len / 4) << 28 | (TCP_FLAG_SYN | TCP_FLAG_ACK) << 16;     /* window 0 */
    t5 = TCP_OPT_MSS << 24 | TCP_OPT_MSS_LEN << 16 | (__u16)(value >> 32);
    sum = (__u64)t0 + t1 + t2 + t3 + t5 + IPPROTO_TCP + reply_len;       /* and the pseudo header's addresses */
    if (o->timestamps) {
        t6 = o->sack ? TCP_OPT_SACK_PERM << 24 | TCP_OPT_SACK_PERM_LEN << 16 | TCP_OPT_TIMESTAMP << 8 |
                       TCP_OPT_TIMESTAMP_LEN
                     : TCP_OPT_NOP << 24 | TCP_OPT_NOP << 16 | TCP_OPT_TIMESTAMP << 8 | TCP_OPT_TIMESTAMP_LEN;
        t7 = (__u32)(bpf_ktime_get_coarse_ns() / 1000000) & ~0x3fU;
        t7 |= o->window_scaling ? o->wscale : 0xf;
        if (o->sack)
            t7 |= 1 << 4;
        t8 = bpf_ntohl(o->tsval);       /* the client's, echoed as it came */
        t9 = o->window_scaling ? TCP_OPT_NOP << 24 | TCP_OPT_WSCALE << 16 | TCP_OPT_WSCALE_LEN << 8 |
                                 EW_SYNPROXY_WSCALE
                               : TCP_OPT_NOP << 24 | TCP_OPT_NOP << 16 | TCP_OPT_NOP << 8 | TCP_OPT_NOP;
        sum += (__u64)t6 + t7 + t8 + t9;
    }

    if (family == EW_FAMILY_IPV4) {
        const struct iphdr *syn_ip = ip;
        __u32 saddr = bpf_ntohl(syn_ip->daddr), daddr = bpf_ntohl(syn_ip->saddr);
        __u32 i0 = 0x45U << 24 | (sizeof(struct iphdr) + reply_len), i1 = IPV4_DONT_FRAGMENT;
        __u32 i2 = EW_SYNACK_TTL << 24 | IPPROTO_TCP << 16;

        i2 |= fold_checksum((__u64)i0 + i1 + i2 + saddr + daddr);
        out[EW_SYNACK_IPV4_WORD] = bpf_htonl(i0);
        out[EW_SYNACK_IPV4_WORD + 1] = bpf_htonl(i1);
        out[EW_SYNACK_IPV4_WORD + 2] = bpf_htonl(i2);
        out[EW_SYNACK_IPV4_WORD + 3] = bpf_htonl(saddr);
        out[EW_SYNACK_IPV4_WORD + 4] = bpf_htonl(daddr);
        sum += (__u64)saddr + daddr;
    } else {
        const struct ipv6hdr *syn_ip6 = ip;

        out[0] = bpf_htonl(0x60000000);     /* version 6, no traffic class or flow label */
        out[1] = bpf_htonl(reply_len << 16 | IPPROTO_TCP << 8 | EW_SYNACK_TTL);
#pragma unroll
        for (__u32 i = 0; i < 4; i++) {
            __u32 saddr = syn_ip6->daddr.in6_u.u6_addr32[i], daddr = syn_ip6->saddr.in6_u.u6_addr32[i];

            out[2 + i] = saddr;
            out[6 + i] = daddr;
            sum += (__u64)bpf_ntohl(saddr) + bpf_ntohl(daddr);
        }
    }
    tcp[0] = bpf_htonl(t0);
    tcp[1] = bpf_htonl(t1);
    tcp[2] = bpf_htonl(t2);
    tcp[3] = bpf_htonl(t3);
    tcp[4] = bpf_htonl(fold_checksum(sum) << 16);      /* the checksum, urgent pointer 0 */
    tcp[5] = bpf_htonl(t5);
    if (o->timestamps) {
        tcp[6] = bpf_htonl(t6);
        tcp[7] = bpf_htonl(t7);
        tcp[8] = bpf_htonl(t8);
        tcp[9] = bpf_htonl(t9);
    }
    return reply_len;
}

/* Makes the frame the reply: Ethernet addresses swapped, resized to exactly
 * the reply (unless it is already: the flood's MSS-only SYN and Linux's SYN
 * are as long as their answers), the IP and TCP headers written at
 * l3_offset in one piece, directly for an untagged frame, else by offset
 * (bpf_xdp_store_bytes: a packet pointer moved by a variable would need
 * CAP_PERFMON). Every packet pointer is stale after this. */
static __always_inline __u32 write_reply(struct xdp_md *ctx, __u32 l3_offset, const __u32 *reply,
                                         __u32 reply_len, __u32 family)
{
    __u32 ip_len = family == EW_FAMILY_IPV4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u8 mac[ETH_ALEN];
    int delta;

    if ((void *)(eth + 1) > data_end)
        return EW_REASON_DROP_BAD_COOKIE;
    __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
    delta = (int)(l3_offset + ip_len + reply_len) - (int)bpf_xdp_get_buff_len(ctx);
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        return EW_REASON_DROP_BAD_COOKIE;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (l3_offset == sizeof(struct ethhdr)) {
        __u32 *to = data + sizeof(struct ethhdr);

        /* Word by word at constant offsets, one length per branch. */
#define EW_WRITE_REPLY_WORDS(first, bytes)                              \
        if ((void *)to + (bytes) <= data_end) {                         \
            _Pragma("unroll")                                           \
            for (__u32 i = 0; i < (bytes) / 4; i++)                     \
                to[i] = reply[(first) + i];                             \
            return EW_REASON_ANSWER_SYN_COOKIE;                         \
        }
        if (family == EW_FAMILY_IPV4 && reply_len == EW_SYNACK_TCP_LEN) {
            EW_WRITE_REPLY_WORDS(EW_SYNACK_IPV4_WORD, sizeof(struct iphdr) + EW_SYNACK_TCP_LEN)
        } else if (family == EW_FAMILY_IPV4) {
            EW_WRITE_REPLY_WORDS(EW_SYNACK_IPV4_WORD, sizeof(struct iphdr) + EW_SYNACK_TCP_LEN_TS)
        } else if (reply_len == EW_SYNACK_TCP_LEN) {
            EW_WRITE_REPLY_WORDS(0, sizeof(struct ipv6hdr) + EW_SYNACK_TCP_LEN)
        } else {
            EW_WRITE_REPLY_WORDS(0, sizeof(struct ipv6hdr) + EW_SYNACK_TCP_LEN_TS)
        }
#undef EW_WRITE_REPLY_WORDS
    }
    if (family == EW_FAMILY_IPV4) {
        if (reply_len == EW_SYNACK_TCP_LEN_TS ?
            bpf_xdp_store_bytes(ctx, l3_offset, (void *)&reply[EW_SYNACK_IPV4_WORD],
                                sizeof(struct iphdr) + EW_SYNACK_TCP_LEN_TS) :
            bpf_xdp_store_bytes(ctx, l3_offset, (void *)&reply[EW_SYNACK_IPV4_WORD],
                                sizeof(struct iphdr) + EW_SYNACK_TCP_LEN))
            return EW_REASON_DROP_BAD_COOKIE;
    } else {
        if (reply_len == EW_SYNACK_TCP_LEN_TS ?
            bpf_xdp_store_bytes(ctx, l3_offset, (void *)reply, sizeof(struct ipv6hdr) + EW_SYNACK_TCP_LEN_TS) :
            bpf_xdp_store_bytes(ctx, l3_offset, (void *)reply, sizeof(struct ipv6hdr) + EW_SYNACK_TCP_LEN))
            return EW_REASON_DROP_BAD_COOKIE;
    }
    return EW_REASON_ANSWER_SYN_COOKIE;
}

/* The untagged frame's SYN (no VLAN tag, no IPv4 options or IPv6
 * extension headers), read in place at constant offsets, with no option
 * layout but the three find_syn_options knows without the walk; or
 * EW_ANSWER_ELSEWHERE for answer_copied_syn below. Almost every SYN is
 * this one, and it needs no copy. */
#define EW_ANSWER_ELSEWHERE 0xffffffffU

static __always_inline __u32 answer_untagged_syn(struct xdp_md *ctx, __u32 family)
{
    __u32 ip_len = family == EW_FAMILY_IPV4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    void *ip = data + sizeof(struct ethhdr);
    const struct tcphdr *syn = ip + ip_len;
    const __u32 *words = (const __u32 *)syn;
    struct syn_options found = {};
    __u32 reply[EW_SYNACK_MAX_WORDS] = {};
    __u32 tcp_len, reply_len;
    __s64 value;

    if ((void *)(syn + 1) > data_end)
        return EW_ANSWER_ELSEWHERE;
    if (family != EW_FAMILY_IPV4 && ((const struct ipv6hdr *)ip)->nexthdr != IPPROTO_TCP)
        return EW_ANSWER_ELSEWHERE;
    tcp_len = ((const __u8 *)syn)[12] >> 4 << 2;
    /* The cookie helper gets a constant length in each branch: the packet
     * range the verifier knows covers that, and no variable one. */
    if (tcp_len == sizeof(struct tcphdr)) {
        value = family == EW_FAMILY_IPV4 ?
                bpf_tcp_raw_gen_syncookie_ipv4(ip, (struct tcphdr *)syn, sizeof(struct tcphdr)) :
                bpf_tcp_raw_gen_syncookie_ipv6(ip, (struct tcphdr *)syn, sizeof(struct tcphdr));
    } else if (tcp_len == sizeof(struct tcphdr) + 4) {
        if ((void *)syn + sizeof(struct tcphdr) + 4 > data_end ||
            (words[5] & EW_OPT_WORD(0xff, 0xff, 0, 0)) != EW_OPT_WORD(TCP_OPT_MSS, TCP_OPT_MSS_LEN, 0, 0))
            return EW_ANSWER_ELSEWHERE;
        value = family == EW_FAMILY_IPV4 ?
                bpf_tcp_raw_gen_syncookie_ipv4(ip, (struct tcphdr *)syn, sizeof(struct tcphdr) + 4) :
                bpf_tcp_raw_gen_syncookie_ipv6(ip, (struct tcphdr *)syn, sizeof(struct tcphdr) + 4);
    } else if (tcp_len == sizeof(struct tcphdr) + 20) {
        __u8 wscale;

        if ((void *)syn + sizeof(struct tcphdr) + 20 > data_end ||
            (words[5] & EW_OPT_WORD(0xff, 0xff, 0, 0)) != EW_OPT_WORD(TCP_OPT_MSS, TCP_OPT_MSS_LEN, 0, 0) ||
            words[6] != EW_OPT_WORD(TCP_OPT_SACK_PERM, TCP_OPT_SACK_PERM_LEN, TCP_OPT_TIMESTAMP,
                                    TCP_OPT_TIMESTAMP_LEN) ||
            (words[9] & EW_OPT_WORD(0xff, 0xff, 0xff, 0)) !=
                EW_OPT_WORD(TCP_OPT_NOP, TCP_OPT_WSCALE, TCP_OPT_WSCALE_LEN, 0))
            return EW_ANSWER_ELSEWHERE;
        wscale = ((const __u8 *)syn)[39];
        found.sack = 1;
        found.timestamps = 1;
        found.tsval = words[7];
        found.window_scaling = 1;
        found.wscale = wscale < TCP_OPT_WSCALE_MAX ? wscale : TCP_OPT_WSCALE_MAX;
        value = family == EW_FAMILY_IPV4 ?
                bpf_tcp_raw_gen_syncookie_ipv4(ip, (struct tcphdr *)syn, sizeof(struct tcphdr) + 20) :
                bpf_tcp_raw_gen_syncookie_ipv6(ip, (struct tcphdr *)syn, sizeof(struct tcphdr) + 20);
    } else {
        return EW_ANSWER_ELSEWHERE;
    }
    if (value < 0)
        return EW_REASON_DROP_BAD_COOKIE;
    reply_len = fill_reply(reply, ip, syn, value, &found, family);
    return write_reply(ctx, sizeof(struct ethhdr), reply, reply_len, family);
}

/* Any other SYN: its headers copied out by offset into ew_syn_scratch (two
 * reads: the IP and TCP headers in one when nothing lies between them, then
 * the options), its options found by find_syn_options. */
static __always_inline __u32 answer_copied_syn(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family)
{
    __u32 zero = 0;
    struct option_walk *w = bpf_map_lookup_elem(&ew_syn_scratch, &zero);
    __u32 reply[EW_SYNACK_MAX_WORDS] = {};
    __u32 tcp_len, reply_len;
    __s64 value;

    if (!w)
        return EW_REASON_DROP_BAD_COOKIE;
    if (family == EW_FAMILY_IPV4) {
        if (l4_offset == l3_offset + sizeof(struct iphdr)) {
            if (bpf_xdp_load_bytes(ctx, l3_offset, &w->ip, sizeof(struct iphdr) + sizeof(struct tcphdr)))
                return EW_REASON_DROP_BAD_COOKIE;
        } else if (bpf_xdp_load_bytes(ctx, l3_offset, &w->ip, sizeof(struct iphdr)) ||    /* IP options */
                   bpf_xdp_load_bytes(ctx, l4_offset, w->words, sizeof(struct tcphdr))) {
            return EW_REASON_DROP_BAD_COOKIE;
        }
    } else {
        if (l4_offset != l3_offset + sizeof(struct ipv6hdr) ||      /* extension headers */
            bpf_xdp_load_bytes(ctx, l3_offset, &w->ip6, sizeof(struct ipv6hdr) + sizeof(struct tcphdr)) ||
            w->ip6.nexthdr != IPPROTO_TCP)
            return EW_REASON_DROP_BAD_COOKIE;
    }
    tcp_len = ((const __u8 *)w->words)[12] >> 4 << 2;
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
    find_syn_options(w, tcp_len);
    /* One call per family, each with its own header (a header chosen by a
     * variable would be pointer arithmetic refused without CAP_PERFMON). */
    if (family == EW_FAMILY_IPV4)
        reply_len = fill_reply(reply, &w->ip, (const struct tcphdr *)w->words, value, &w->found, EW_FAMILY_IPV4);
    else
        reply_len = fill_reply(reply, &w->ip6, (const struct tcphdr *)w->words, value, &w->found, EW_FAMILY_IPV6);
    return write_reply(ctx, l3_offset, reply, reply_len, family);
}

/* Turns the SYN in `ctx` into the SYN-ACK that answers it with a cookie,
 * ready for XDP_TX: addresses and ports swapped, everything after the TCP
 * header cut off. Returns ANSWER_SYN_COOKIE, or DROP_BAD_COOKIE for a SYN
 * that cannot be answered (IPv6 extension headers, options cut short, or
 * refused by the cookie helper). The body of the global function
 * ew_answer_syn_cookie (edgewarden.bpf.c).
 *
 * The cookie is the kernel's (bpf_tcp_raw_gen_syncookie_*: its SipHash
 * over addresses, ports and a secret): the nftables synproxy rule checks
 * the returning ACK with that same hash, so no other hash can stand in. */
static __always_inline __u32 build_syn_cookie_answer(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset,
                                                     __u32 family)
{
    __u32 reason = EW_ANSWER_ELSEWHERE;

    if (l3_offset == sizeof(struct ethhdr)) {
        if (family == EW_FAMILY_IPV4 && l4_offset == sizeof(struct ethhdr) + sizeof(struct iphdr))
            reason = answer_untagged_syn(ctx, EW_FAMILY_IPV4);
        else if (family != EW_FAMILY_IPV4 && l4_offset == sizeof(struct ethhdr) + sizeof(struct ipv6hdr))
            reason = answer_untagged_syn(ctx, EW_FAMILY_IPV6);
    }
    return reason != EW_ANSWER_ELSEWHERE ? reason : answer_copied_syn(ctx, l3_offset, l4_offset, family);
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
