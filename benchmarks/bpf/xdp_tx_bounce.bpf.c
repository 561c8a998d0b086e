/* Load-test reference for the SYN-cookie scenario (benchmarks/loadtest.py):
 * the least an XDP program that answers a frame can do, swap the Ethernet
 * addresses and send it back (XDP_TX). It builds no answer; it shows what
 * the transmit itself costs on the lab's veth, next to XDP_DROP's drop. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_tx_bounce(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    unsigned char mac[ETH_ALEN];

    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    __builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac, ETH_ALEN);
    return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
