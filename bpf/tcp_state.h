/* The TCP state verdict per tenant (ew_flood_policy.flags): the drops that
 * need kernel state, conntrack and the SYN cookie secret.
 *
 *  - SYN cookies (EW_FLOOD_SYN_COOKIES): a SYN is answered from XDP with a
 *    SYN-ACK whose sequence number is a kernel SYN cookie (built by
 *    syn_cookie_answer.h), so spoofed SYNs never reach a server's backlog.
 *    Any other segment must belong to a known connection or be an ACK
 *    carrying a valid cookie; the latter is passed to the kernel, where the
 *    nftables synproxy rule the agent installs (agent/datapath/netfilter.py)
 *    checks the same cookie and opens the connection to the server.
 *  - SYN-ACKs with no connection (EW_FLOOD_SYN_ACK_DROP / _TRACK): dropped
 *    always, or unless conntrack knows the connection they answer.
 *
 * "Known connection" means a (confirmed) conntrack entry in the namespace of
 * the interface the packet arrived on. Where conntrack cannot answer, the
 * segment is left to the kernel, whose netfilter half judges it again: a
 * lookup that failed (opts.error other than "no entry"), and the build for
 * kernels without usable conntrack kfuncs (EW_WITHOUT_CONNTRACK,
 * edgewarden_no_conntrack.bpf.c), which the agent loads there and where it
 * refuses policies that need conntrack.
 *
 * Why a second build rather than weak kfuncs checked with bpf_ksym_exists():
 * libbpf 1.1 relocates a kfunc's address as 0 whether it resolved it or
 * not, so bpf_ksym_exists() is always false; an unresolved weak kfunc left
 * in dead code was still refused by this kernel's verifier ("invalid kernel
 * function call not eliminated"); and without CAP_SYS_ADMIN libbpf cannot
 * enumerate module BTFs, so a kfunc not in vmlinux (nf_conntrack built as a
 * module, or absent) fails the load outright, weak or not. */
#ifndef EW_TCP_STATE_H
#define EW_TCP_STATE_H

#include "tcp_segment.h"

/* The namespace looked in; a test build names one that does not exist, to
 * make every lookup fail (tests/test_conntrack_absent.py). */
#ifndef EW_CT_NETNS_ID
#define EW_CT_NETNS_ID BPF_F_CURRENT_NETNS
#endif

#ifndef EW_WITHOUT_CONNTRACK
/* A full type, as libbpf wants for matching the kfunc prototypes against
 * the kernel's. Never read: reading its fields (status) would need
 * CAP_PERFMON, nor is it needed, since the lookup searches conntrack's hash
 * table, where an entry is only inserted once confirmed. */
struct nf_conn {
    unsigned long status;
} __attribute__((preserve_access_index));

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

/* The lookup found no entry (opts.error); any other error is a failed lookup. */
#define EW_CT_ENOENT 2

extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
                                         struct ew_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

/* The segment belongs to a confirmed conntrack connection (either
 * direction), or conntrack cannot tell (a failed lookup): those segments go
 * on to the kernel, which tracks them itself. */
static __always_inline int tcp_connection_known(struct xdp_md *ctx, const struct tcp_segment *seg, __u32 family)
{
    struct ew_ct_opts opts = { .netns_id = EW_CT_NETNS_ID, .l4proto = IPPROTO_TCP };
    struct bpf_sock_tuple tuple = {};
    struct nf_conn *ct;

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
        return opts.error != -EW_CT_ENOENT;
    bpf_ct_release(ct);
    return 1;
}
#else
/* No conntrack to ask: cannot tell, the kernel decides. */
static __always_inline int tcp_connection_known(struct xdp_md *ctx, const struct tcp_segment *seg, __u32 family)
{
    return 1;
}
#endif

/* The ACK acknowledges a cookie this kernel issued (within its lifetime). */
static __always_inline int ack_has_valid_cookie(struct tcp_segment *seg, __u32 family)
{
    if (family == EW_FAMILY_IPV4)
        return bpf_tcp_raw_check_syncookie_ipv4(&seg->ip, &seg->tcp) == 0;
    return bpf_tcp_raw_check_syncookie_ipv6(&seg->ip6, &seg->tcp) == 0;
}

static __always_inline int wants_syn_cookie(const struct packet_facts *f, __u32 policy_flags)
{
    return (policy_flags & EW_FLOOD_SYN_COOKIES) && f->l4_parsed && f->l4_proto == IPPROTO_TCP &&
           (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* The drops of the TCP state policies that need kernel state (conntrack,
 * the cookie secret) for a parsed TCP segment, or PASS_ALLOWED. A SYN in
 * cookie mode passes here; it is answered after the rate limits. The body
 * of the global function ew_tcp_state_verdict (edgewarden.bpf.c). */
static __always_inline __u32 tcp_state_checks(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family,
                                              __u32 policy_flags)
{
    struct tcp_segment seg = {};
    __u8 flags;

    if (copy_segment(ctx, l3_offset, l4_offset, family, &seg) < 0)
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

/* Defined in the entry file, so that a header never defines a global
 * function (a file including this one would carry its own copy). */
__u32 ew_tcp_state_verdict(struct xdp_md *ctx, __u32 l3_offset, __u32 l4_offset, __u32 family, __u32 policy_flags);

/* A SYN in cookie mode needs no kernel state, only its flags, which the
 * parser has: it is judged here as tcp_state_checks would, without the call
 * and the copy (the cookie answer reads the segment itself). */
static __always_inline __u32 tcp_state_verdict(struct xdp_md *ctx, const struct packet_facts *f, __u32 policy_flags)
{
    if ((policy_flags & EW_FLOOD_SYN_COOKIES) && f->l4_parsed &&
        (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
        return (f->tcp_flags & (TCP_FLAG_RST | TCP_FLAG_FIN)) ? EW_REASON_DROP_BAD_COOKIE : EW_REASON_PASS_ALLOWED;
    return ew_tcp_state_verdict(ctx, f->l3_offset, f->l4_offset, f->family, policy_flags);
}

#endif /* EW_TCP_STATE_H */
