/* A TCP segment's IP and TCP headers, copied out of the packet from the
 * offsets the parser found: what the TCP state verdict (tcp_state.h) and the
 * cookie SYN-ACK builder (syn_cookie_answer.h) work on. Both run as global
 * functions (verified once, not once per path of the caller), and those
 * cannot take packet pointers, only the context and integers. */
#ifndef EW_TCP_SEGMENT_H
#define EW_TCP_SEGMENT_H

#include "parse.h"

struct tcp_segment {
    struct tcphdr tcp;
    union {
        struct iphdr ip;
        struct ipv6hdr ip6;
    };
};

/* Copied by offset (bpf_xdp_load_bytes): a packet pointer moved by a
 * variable would need CAP_PERFMON. */
static __always_inline int copy_segment(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family,
                                        struct tcp_segment *seg)
{
    if (bpf_xdp_load_bytes(ctx, l4_offset, &seg->tcp, sizeof(struct tcphdr)))
        return -1;
    if (family == EW_FAMILY_IPV4)
        return bpf_xdp_load_bytes(ctx, l3_offset, &seg->ip, sizeof(struct iphdr)) ? -1 : 0;
    return bpf_xdp_load_bytes(ctx, l3_offset, &seg->ip6, sizeof(struct ipv6hdr)) ? -1 : 0;
}

static __always_inline int is_syn_ack(__u8 flags)
{
    return (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK);
}

#endif /* EW_TCP_SEGMENT_H */
