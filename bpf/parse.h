/* Bounds-checked packet parsers in the xdp-tools cursor style: every parser
 * takes the cursor and data_end, and either advances past one header or
 * fails, so the verifier never sees an unchecked read. parse_packet() turns a
 * frame into the packet_facts that accounting and verdict work from.
 *
 * Headers end where the IP length field says (IPv4 tot_len, IPv6
 * payload_len), not where the frame does: what follows is Ethernet padding,
 * never a transport header. An IP length beyond the frame is malformed.
 *
 * Loadable with CAP_BPF alone, without CAP_PERFMON: the verifier then
 * refuses subtracting packet pointers (a pointer leak) and adding a
 * variable to one (Spectre v1 hardening). So offsets travel as integers
 * beside the pointers; packet pointers only move by constants; a header
 * at a variable offset (after IPv4 options, in an IPv6 extension chain) is
 * copied out with bpf_xdp_load_bytes at its integer offset. */
#ifndef EW_PARSE_H
#define EW_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "edgewarden_abi.h"
#include "protocols.h"

enum ew_fragment_kind {
    EW_NOT_FRAGMENT = 0,
    EW_FIRST_FRAGMENT = 1,
    EW_NONFIRST_FRAGMENT = 2,
};

union ew_address {
    __be32 v4;
    struct in6_addr v6;
};

/* What the datapath knows about one frame once parsing is done: values,
 * no packet pointers, so that a global function can take it. */
struct packet_facts {
    union ew_address saddr;   /* if family != 0 */
    union ew_address daddr;
    __u32 length;         /* whole frame with fragments, as counted in bytes counters */
    __u32 ip_end;         /* offset of the end of the IP datagram (what its length field says), if !malformed */
    __u16 l3_offset;      /* of the IP header from the frame start, if family != 0 */
    __u16 dport;          /* network byte order, 0 unless a TCP/UDP header was read */
    __u16 sport;          /* network byte order, likewise */
    __u8 family;          /* 0 (not IP or unreadable), EW_FAMILY_IPV4, EW_FAMILY_IPV6 */
    __u8 l4_proto;
    __u8 fragment;        /* enum ew_fragment_kind */
    __u8 malformed;       /* something after the fixed IP header is broken */
    __u8 l4_parsed;       /* the TCP/UDP/ICMP header was read */
    __u8 traffic_class;   /* enum ew_traffic_class */
    __u8 tcp_flags;       /* byte 13 of the TCP header, if l4_proto is TCP and l4_parsed */
    __u16 l4_offset;      /* of the TCP/UDP/ICMP header from the frame start, if l4_parsed; an
                           * offset, not a pointer, so the verifier can still prune states */
};

struct hdr_cursor {
    void *pos;            /* valid while `direct` */
    __u32 offset;         /* from the frame start */
    __u32 direct;         /* 0 once past a header of variable length: read by offset from there */
};

/* Moves the cursor by a constant (a packet pointer may only move by one). */
static __always_inline void cursor_advance(struct hdr_cursor *nh, __u32 bytes)
{
    nh->pos += bytes;
    nh->offset += bytes;
}

/* Moves the cursor past a header of variable length. */
static __always_inline void cursor_skip(struct hdr_cursor *nh, __u32 bytes)
{
    nh->direct = 0;
    nh->offset += bytes;
}

/* The header of `size` (a constant) bytes at the cursor: in the packet
 * while the cursor points there, else copied into *copy. `ok` says whether
 * the frame holds it. (Without CAP_PERFMON a packet pointer may not even be
 * compared with NULL, hence the flag.) */
#define cursor_header(ctx, nh, data_end, copy, size, ok) ({                                  \
    void *header_ = (copy);                                                                 \
    (ok) = 0;                                                                               \
    if ((nh)->direct) {                                                                     \
        if ((nh)->pos + (size) <= (data_end)) {                                             \
            header_ = (nh)->pos;                                                            \
            (ok) = 1;                                                                       \
        }                                                                                   \
    } else if (bpf_xdp_load_bytes((ctx), (nh)->offset, (copy), (size)) == 0) {              \
        (ok) = 1;                                                                           \
    }                                                                                       \
    header_;                                                                                \
})

static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end, __u16 *ethertype)
{
    struct ethhdr *eth = nh->pos;

    if ((void *)(eth + 1) > data_end)
        return -1;
    cursor_advance(nh, sizeof(*eth));
    *ethertype = eth->h_proto;
    return 0;
}

struct vlan_tag {
    __be16 tci;
    __be16 encapsulated_proto;
};

static __always_inline int is_vlan_tpid(__u16 ethertype)
{
    return ethertype == bpf_htons(ETH_P_8021Q) || ethertype == bpf_htons(ETH_P_8021AD_);
}

/* Skips up to EW_MAX_VLAN_TAGS tags. A deeper stack hides the IP header from
 * us, so it is reported as an error rather than passed uninspected. */
static __always_inline int skip_vlan_tags(struct hdr_cursor *nh, void *data_end, __u16 *ethertype)
{
#pragma unroll
    for (int i = 0; i < EW_MAX_VLAN_TAGS; i++) {
        struct vlan_tag *tag = nh->pos;

        if (!is_vlan_tpid(*ethertype))
            return 0;
        if ((void *)(tag + 1) > data_end)
            return -1;
        cursor_advance(nh, sizeof(*tag));
        *ethertype = tag->encapsulated_proto;
    }
    return is_vlan_tpid(*ethertype) ? -1 : 0;
}

/* Fixed IPv4 header present and version 4: addresses are known. Problems in
 * the options or the total length (shorter than the header, longer than the
 * frame) only mark the packet malformed. */
static __always_inline int parse_ipv4(struct hdr_cursor *nh, void *data_end, struct packet_facts *f)
{
    struct iphdr *ip = nh->pos;
    __u32 header_len, total_len;
    __u16 frag;

    if ((void *)(ip + 1) > data_end || ip->version != 4)
        return -1;
    f->family = EW_FAMILY_IPV4;
    f->saddr.v4 = ip->saddr;
    f->daddr.v4 = ip->daddr;
    f->l3_offset = nh->offset;
    f->l4_proto = ip->protocol;
    header_len = ip->ihl * 4;
    total_len = bpf_ntohs(ip->tot_len);
    if (header_len < sizeof(*ip) || total_len < header_len || nh->offset + total_len > f->length) {
        f->malformed = 1;
        return 0;
    }
    f->ip_end = nh->offset + total_len;
    if (header_len == sizeof(*ip))
        cursor_advance(nh, sizeof(*ip));
    else
        cursor_skip(nh, header_len);
    frag = bpf_ntohs(ip->frag_off);
    if (frag & IPV4_OFFSET_MASK)
        f->fragment = EW_NONFIRST_FRAGMENT;
    else if (frag & IPV4_MF)
        f->fragment = EW_FIRST_FRAGMENT;
    return 0;
}

/* The first 8 bytes of an IPv6 extension header: all of a fragment
 * header, and at least the first 8 of the others. */
struct ipv6_ext_hdr_ {
    __u8 nexthdr;
    __u8 hdrlen;          /* options headers: in 8-byte units, not counting the first 8 */
    __be16 frag_off;      /* fragment header: offset << 3 | M */
    __be32 rest;
};

static __always_inline int is_ipv6_ext_header(__u8 nexthdr)
{
    return nexthdr == IPV6_NEXTHDR_HOP || nexthdr == IPV6_NEXTHDR_ROUTING ||
           nexthdr == IPV6_NEXTHDR_DEST || nexthdr == IPV6_NEXTHDR_FRAGMENT;
}

/* Walks hop-by-hop, routing, destination-options and fragment headers, at
 * most EW_MAX_IPV6_EXT_HEADERS of them; a longer chain is malformed to us,
 * since whatever it hides cannot be inspected. So is a payload length
 * beyond the frame, or a header that does not fit in the payload. */
static __always_inline int parse_ipv6(struct xdp_md *ctx, struct hdr_cursor *nh, void *data_end,
                                      struct packet_facts *f)
{
    struct ipv6hdr *ip6 = nh->pos;
    __u8 nexthdr;

    if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
        return -1;
    f->family = EW_FAMILY_IPV6;
    __builtin_memcpy(&f->saddr.v6, &ip6->saddr, sizeof(struct in6_addr));
    __builtin_memcpy(&f->daddr.v6, &ip6->daddr, sizeof(struct in6_addr));
    f->l3_offset = nh->offset;
    cursor_advance(nh, sizeof(*ip6));
    f->ip_end = nh->offset + bpf_ntohs(ip6->payload_len);
    if (f->ip_end > f->length) {
        f->malformed = 1;
        return 0;
    }
    nexthdr = ip6->nexthdr;

#pragma unroll
    for (int i = 0; i < EW_MAX_IPV6_EXT_HEADERS; i++) {
        struct ipv6_ext_hdr_ ext;
        __u32 len;

        if (!is_ipv6_ext_header(nexthdr))
            break;
        /* Every extension header is at least 8 bytes. */
        if (nh->offset + sizeof(ext) > f->ip_end || bpf_xdp_load_bytes(ctx, nh->offset, &ext, sizeof(ext))) {
            f->malformed = 1;
            return 0;
        }
        if (nexthdr == IPV6_NEXTHDR_FRAGMENT) {
            __u16 frag = bpf_ntohs(ext.frag_off);

            cursor_skip(nh, sizeof(ext));
            nexthdr = ext.nexthdr;
            if (frag & IPV6_FRAG_OFFSET_MASK) {
                f->fragment = EW_NONFIRST_FRAGMENT;
                f->l4_proto = nexthdr;
                return 0;
            }
            if (frag & IPV6_FRAG_MORE)
                f->fragment = EW_FIRST_FRAGMENT;
        } else {
            len = (ext.hdrlen + 1) * 8;
            if (nh->offset + len > f->ip_end) {
                f->malformed = 1;
                return 0;
            }
            nexthdr = ext.nexthdr;
            cursor_skip(nh, len);
        }
    }
    f->l4_proto = nexthdr;
    if (is_ipv6_ext_header(nexthdr))
        f->malformed = 1;
    return 0;
}

/* Reads the transport header when there is one to read. A header that does
 * not fit, in the frame or in the IP datagram, is malformed; protocols we do
 * not parse are left alone. */
static __always_inline void parse_l4(struct xdp_md *ctx, struct hdr_cursor *nh, void *data_end,
                                     struct packet_facts *f)
{
    if (f->malformed || f->fragment == EW_NONFIRST_FRAGMENT)
        return;

    if (f->l4_proto == IPPROTO_TCP) {
        struct tcphdr copy;
        const struct tcphdr *tcp;

        if (nh->offset + sizeof(copy) > f->ip_end) {
            f->malformed = 1;
            return;
        }
        int ok;

        tcp = cursor_header(ctx, nh, data_end, &copy, sizeof(copy), ok);
        if (!ok || tcp->doff < 5 || nh->offset + tcp->doff * 4 > f->ip_end) {
            f->malformed = 1;
            return;
        }
        f->dport = tcp->dest;
        f->sport = tcp->source;
        f->tcp_flags = ((const __u8 *)tcp)[13];
        f->l4_offset = nh->offset;
        f->l4_parsed = 1;
    } else if (f->l4_proto == IPPROTO_UDP) {
        struct udphdr copy;
        const struct udphdr *udp;

        if (nh->offset + sizeof(copy) > f->ip_end) {
            f->malformed = 1;
            return;
        }
        int ok;

        udp = cursor_header(ctx, nh, data_end, &copy, sizeof(copy), ok);
        if (!ok) {
            f->malformed = 1;
            return;
        }
        f->dport = udp->dest;
        f->sport = udp->source;
        f->l4_offset = nh->offset;
        f->l4_parsed = 1;
    } else if ((f->l4_proto == IPPROTO_ICMP && f->family == EW_FAMILY_IPV4) ||
               (f->l4_proto == IPPROTO_ICMPV6_ && f->family == EW_FAMILY_IPV6)) {
        /* type, code, checksum: the part every ICMP message has */
        __u32 copy;
        int ok;

        if (nh->offset + sizeof(copy) > f->ip_end) {
            f->malformed = 1;
            return;
        }
        cursor_header(ctx, nh, data_end, &copy, sizeof(copy), ok);
        if (!ok) {
            f->malformed = 1;
            return;
        }
        f->l4_offset = nh->offset;
        f->l4_parsed = 1;
    }
}

static __always_inline __u8 classify_traffic(const struct packet_facts *f)
{
    if (f->family == 0 || f->malformed)
        return EW_CLASS_OTHER;
    if (f->fragment != EW_NOT_FRAGMENT)
        return EW_CLASS_FRAGMENT;
    if (!f->l4_parsed)
        return EW_CLASS_OTHER;
    switch (f->l4_proto) {
    case IPPROTO_TCP:
        return (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN ? EW_CLASS_TCP_SYN
                                                                           : EW_CLASS_TCP_OTHER;
    case IPPROTO_UDP:
        return EW_CLASS_UDP;
    default:
        return EW_CLASS_ICMP;
    }
}

enum ew_parse_result {
    EW_PARSED_IP = 0,       /* facts->family set, addresses readable */
    EW_PARSED_NON_IP = 1,   /* a well-formed frame that is not IP */
    EW_PARSE_BROKEN = 2,    /* no usable IP header: truncated or inconsistent */
};

static __always_inline enum ew_parse_result parse_packet(struct xdp_md *ctx, struct packet_facts *f)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct hdr_cursor nh = { .pos = data, .offset = 0, .direct = 1 };
    __u16 ethertype;

    /* Whole frame including fragments of a multi-buffer packet (jumbo frames,
     * GRO): only the linear part is parsed, but all of it is counted. */
    f->length = bpf_xdp_get_buff_len(ctx);
    f->traffic_class = EW_CLASS_OTHER;
    if (parse_ethhdr(&nh, data_end, &ethertype) < 0 || skip_vlan_tags(&nh, data_end, &ethertype) < 0)
        return EW_PARSE_BROKEN;

    if (ethertype == bpf_htons(ETH_P_IP)) {
        if (parse_ipv4(&nh, data_end, f) < 0)
            return EW_PARSE_BROKEN;
    } else if (ethertype == bpf_htons(ETH_P_IPV6)) {
        if (parse_ipv6(ctx, &nh, data_end, f) < 0)
            return EW_PARSE_BROKEN;
    } else {
        return EW_PARSED_NON_IP;
    }
    parse_l4(ctx, &nh, data_end, f);
    f->traffic_class = classify_traffic(f);
    return EW_PARSED_IP;
}

#endif /* EW_PARSE_H */
