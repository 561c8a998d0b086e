/* For the far ends of the lab's veth pairs (agent/lab.py): a veth receives
 * frames another XDP program sent with XDP_TX (SYN-cookie answers from the
 * edge) only while it runs an XDP program itself. The client's passes all;
 * the attacker's drops all, as the Internet would swallow the answers to
 * spoofed sources without costing the edge's host anything more. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int lab_peer_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

SEC("xdp")
int lab_peer_drop(struct xdp_md *ctx)
{
    return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
