/* A TCP segment's IP and TCP headers, copied out of the packet from the
 * offsets the parser found: what the TCP state verdict (tcp_state.h) and the
 * cookie SYN-ACK builder (syn_cookie_answer.h) work on. Both run as global
 * functions (verified once, not once per path of the caller), and those
 * cannot take packet pointers, only the context and integers. */
#ifndef EW_TCP_SEGMENT_H
#define EW_TCP_SEGMENT_H

#include "parse.h"

/* The IP header (either) ends where the TCP header starts, so that one read
 * fills both when nothing lies between them in the packet. */
struct tcp_segment {
    union {
        struct {
            __u8 ip_pad[sizeof(struct ipv6hdr) - sizeof(struct iphdr)];
            struct iphdr ip;
        };
        struct ipv6hdr ip6;
    };
    struct tcphdr tcp;
};

_Static_assert(__builtin_offsetof(struct tcp_segment, tcp) == sizeof(struct ipv6hdr) &&
               __builtin_offsetof(struct tcp_segment, ip) + sizeof(struct iphdr) == sizeof(struct ipv6hdr),
               "the IP headers end where the TCP header starts");

/* Copied by offset (bpf_xdp_load_bytes): a packet pointer moved by a
 * variable would need CAP_PERFMON. One read when the TCP header follows
 * the IP header's fixed part (no IPv4 options, no IPv6 extension headers). */
static __always_inline int copy_segment(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family,
                                        struct tcp_segment *seg)
{
    if (family == EW_FAMILY_IPV4) {
        if (l4_offset == l3_offset + sizeof(struct iphdr))
            return bpf_xdp_load_bytes(ctx, l3_offset, &seg->ip, sizeof(struct iphdr) + sizeof(struct tcphdr)) ?
                   -1 : 0;
        if (bpf_xdp_load_bytes(ctx, l3_offset, &seg->ip, sizeof(struct iphdr)))
            return -1;
    } else {
        if (l4_offset == l3_offset + sizeof(struct ipv6hdr))
            return bpf_xdp_load_bytes(ctx, l3_offset, &seg->ip6, sizeof(struct ipv6hdr) + sizeof(struct tcphdr)) ?
                   -1 : 0;
        if (bpf_xdp_load_bytes(ctx, l3_offset, &seg->ip6, sizeof(struct ipv6hdr)))
            return -1;
    }
    return bpf_xdp_load_bytes(ctx, l4_offset, &seg->tcp, sizeof(struct tcphdr)) ? -1 : 0;
}

static __always_inline int is_syn_ack(__u8 flags)
{
    return (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK);
}

#endif /* EW_TCP_SEGMENT_H */
