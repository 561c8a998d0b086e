/* Bounds-checked packet parsers in the xdp-tools cursor style: every parser
 * takes the cursor and data_end, and either advances past one header or
 * fails, so the verifier never sees an unchecked read. parse_packet() turns a
 * frame into the packet_facts that accounting and verdict work from. */
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

#define ETH_P_8021AD_ 0x88A8
#define IPV4_MF 0x2000
#define IPV4_OFFSET_MASK 0x1fff
#define IPV6_NEXTHDR_HOP 0
#define IPV6_NEXTHDR_ROUTING 43
#define IPV6_NEXTHDR_FRAGMENT 44
#define IPV6_NEXTHDR_DEST 60
#define IPPROTO_ICMPV6_ 58

enum ew_fragment_kind {
    EW_NOT_FRAGMENT = 0,
    EW_FIRST_FRAGMENT = 1,
    EW_NONFIRST_FRAGMENT = 2,
};

/* What the datapath knows about one frame once parsing is done. */
struct packet_facts {
    void *l3;             /* struct iphdr * or struct ipv6hdr *, if family != 0 */
    __u32 length;         /* whole frame with fragments, as counted in bytes counters */
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
    void *pos;
};

static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end, __u16 *ethertype)
{
    struct ethhdr *eth = nh->pos;

    if ((void *)(eth + 1) > data_end)
        return -1;
    nh->pos = eth + 1;
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
        nh->pos = tag + 1;
        *ethertype = tag->encapsulated_proto;
    }
    return is_vlan_tpid(*ethertype) ? -1 : 0;
}

/* Fixed IPv4 header present and version 4: addresses are known. Problems in
 * the options only mark the packet malformed. */
static __always_inline int parse_ipv4(struct hdr_cursor *nh, void *data_end, struct packet_facts *f)
{
    struct iphdr *ip = nh->pos;
    __u32 header_len;
    __u16 frag;

    if ((void *)(ip + 1) > data_end || ip->version != 4)
        return -1;
    f->family = EW_FAMILY_IPV4;
    f->l3 = ip;
    f->l4_proto = ip->protocol;
    header_len = ip->ihl * 4;
    if (header_len < sizeof(*ip) || nh->pos + header_len > data_end) {
        f->malformed = 1;
        return 0;
    }
    nh->pos += header_len;
    frag = bpf_ntohs(ip->frag_off);
    if (frag & IPV4_OFFSET_MASK)
        f->fragment = EW_NONFIRST_FRAGMENT;
    else if (frag & IPV4_MF)
        f->fragment = EW_FIRST_FRAGMENT;
    return 0;
}

struct ipv6_opt_hdr_ {
    __u8 nexthdr;
    __u8 hdrlen;          /* in 8-byte units, not counting the first 8 */
};

struct ipv6_frag_hdr_ {
    __u8 nexthdr;
    __u8 reserved;
    __be16 frag_off;      /* offset << 3 | M */
    __be32 identification;
};

static __always_inline int is_ipv6_ext_header(__u8 nexthdr)
{
    return nexthdr == IPV6_NEXTHDR_HOP || nexthdr == IPV6_NEXTHDR_ROUTING ||
           nexthdr == IPV6_NEXTHDR_DEST || nexthdr == IPV6_NEXTHDR_FRAGMENT;
}

/* Walks hop-by-hop, routing, destination-options and fragment headers, at
 * most EW_MAX_IPV6_EXT_HEADERS of them; a longer chain is malformed to us,
 * since whatever it hides cannot be inspected. */
static __always_inline int parse_ipv6(struct hdr_cursor *nh, void *data_end, struct packet_facts *f)
{
    struct ipv6hdr *ip6 = nh->pos;
    __u8 nexthdr;

    if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
        return -1;
    f->family = EW_FAMILY_IPV6;
    f->l3 = ip6;
    nh->pos = ip6 + 1;
    nexthdr = ip6->nexthdr;

#pragma unroll
    for (int i = 0; i < EW_MAX_IPV6_EXT_HEADERS; i++) {
        if (!is_ipv6_ext_header(nexthdr))
            break;
        if (nexthdr == IPV6_NEXTHDR_FRAGMENT) {
            struct ipv6_frag_hdr_ *fh = nh->pos;
            __u16 frag;

            if ((void *)(fh + 1) > data_end) {
                f->malformed = 1;
                return 0;
            }
            nh->pos = fh + 1;
            nexthdr = fh->nexthdr;
            frag = bpf_ntohs(fh->frag_off);
            if (frag & 0xfff8) {
                f->fragment = EW_NONFIRST_FRAGMENT;
                f->l4_proto = nexthdr;
                return 0;
            }
            if (frag & 1)
                f->fragment = EW_FIRST_FRAGMENT;
        } else {
            struct ipv6_opt_hdr_ *oh = nh->pos;
            __u32 len;

            if ((void *)(oh + 1) > data_end) {
                f->malformed = 1;
                return 0;
            }
            len = (oh->hdrlen + 1) * 8;
            if (nh->pos + len > data_end) {
                f->malformed = 1;
                return 0;
            }
            nexthdr = oh->nexthdr;
            nh->pos += len;
        }
    }
    f->l4_proto = nexthdr;
    if (is_ipv6_ext_header(nexthdr))
        f->malformed = 1;
    return 0;
}

/* Reads the transport header when there is one to read. A header that does
 * not fit is malformed; protocols we do not parse are left alone. */
static __always_inline void parse_l4(struct hdr_cursor *nh, void *data, void *data_end, struct packet_facts *f)
{
    if (f->malformed || f->fragment == EW_NONFIRST_FRAGMENT)
        return;

    if (f->l4_proto == IPPROTO_TCP) {
        struct tcphdr *tcp = nh->pos;

        if ((void *)(tcp + 1) > data_end || tcp->doff < 5 ||
            nh->pos + tcp->doff * 4 > data_end) {
            f->malformed = 1;
            return;
        }
        f->dport = tcp->dest;
        f->sport = tcp->source;
        f->tcp_flags = ((__u8 *)tcp)[13];
        f->l4_offset = (void *)tcp - data;
        f->l4_parsed = 1;
    } else if (f->l4_proto == IPPROTO_UDP) {
        struct udphdr *udp = nh->pos;

        if ((void *)(udp + 1) > data_end) {
            f->malformed = 1;
            return;
        }
        f->dport = udp->dest;
        f->sport = udp->source;
        f->l4_offset = (void *)udp - data;
        f->l4_parsed = 1;
    } else if ((f->l4_proto == IPPROTO_ICMP && f->family == EW_FAMILY_IPV4) ||
               (f->l4_proto == IPPROTO_ICMPV6_ && f->family == EW_FAMILY_IPV6)) {
        /* type, code, checksum: the part every ICMP message has */
        if (nh->pos + 4 > data_end) {
            f->malformed = 1;
            return;
        }
        f->l4_offset = nh->pos - data;
        f->l4_parsed = 1;
    }
}

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04

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
    struct hdr_cursor nh = { .pos = data };
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
        if (parse_ipv6(&nh, data_end, f) < 0)
            return EW_PARSE_BROKEN;
    } else {
        return EW_PARSED_NON_IP;
    }
    parse_l4(&nh, data, data_end, f);
    f->traffic_class = classify_traffic(f);
    return EW_PARSED_IP;
}

#endif /* EW_PARSE_H */
