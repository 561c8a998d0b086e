/* The DPDK worker: EAL start, ports, lcore poll loops, policy snapshots
 * swapped under RCU, and per-lcore counters in the XDP per-CPU layout. The
 * API below is what agent._dpdk (cffi) exposes to agent/dpdk/. Every
 * function that can fail returns a negative number and leaves the reason in
 * ew_last_error(). */
#ifndef EW_DPDK_WORKER_H
#define EW_DPDK_WORKER_H

#include <stdint.h>
#include "tables.h"

struct ew_worker;

/* rte_eal_init with these arguments (argv[0] is the program name). */
int ew_eal_init(int argc, char **argv);
const char *ew_last_error(void);
void ew_eal_cleanup(void);
/* The port of a device by its name ("net_pcap0", "net_af_packet0", a PCI address). */
int ew_port_by_name(const char *name, uint16_t *port);
uint32_t ew_worker_lcore_count(void);

struct ew_worker *ew_worker_new(uint32_t slots, uint32_t mbufs, uint32_t burst, uint32_t source_buckets);
/* Frames received on `port` are judged (or, with judge 0, forwarded as they
 * are) and those that pass go out of `pass_to`. */
int ew_worker_add_port(struct ew_worker *w, uint16_t port, uint16_t pass_to, int judge);
/* Configures and starts the ports and launches the poll loops. The run ends
 * by ew_worker_stop, or by itself after `max_packets` received (0: never). */
int ew_worker_start(struct ew_worker *w, uint64_t max_packets);
int ew_worker_running(struct ew_worker *w);
/* Tests: record what each of the first `capacity` packets of every lcore moved in the counters. */
int ew_worker_enable_trace(struct ew_worker *w, uint32_t capacity);
int ew_worker_read_trace(struct ew_worker *w, uint32_t lcore, struct ew_trace_entry *out, uint32_t max);
void ew_worker_stop(struct ew_worker *w);
/* Joins the lcores, stops and closes the ports (net_pcap writes its file). */
int ew_worker_wait(struct ew_worker *w);
void ew_worker_free(struct ew_worker *w);

/* Publishes a snapshot: every burst after this returns is judged by it;
 * the previous one is freed once every lcore has left it (RCU). The worker
 * owns `snapshot` from here on, even on failure. */
int ew_worker_publish(struct ew_worker *w, struct ew_snapshot *snapshot);
uint64_t ew_worker_swaps(struct ew_worker *w);

/* Counters of `slot` for every lcore, lcore after lcore, as a BPF per-CPU
 * lookup returns them: `out` holds ew_worker_lcores() x struct ew_counters. */
int ew_worker_read_counters(struct ew_worker *w, uint32_t slot, void *out);
int ew_worker_zero_counters(struct ew_worker *w, uint32_t slot);
uint32_t ew_worker_lcores(struct ew_worker *w);
uint32_t ew_worker_slots(struct ew_worker *w);

/* Packet evidence (bpf/sample.h): the worker's ew_sample_config, which the
 * agent writes (samples per second and burst, per tenant and lcore) and the
 * lcores count lost samples in; and the samples the lcores' rings hold,
 * copied into `out` (at most `max`, each lcore's oldest first). One reader
 * at a time. */
struct ew_sample_config *ew_worker_sample_config(struct ew_worker *w);
uint32_t ew_worker_read_samples(struct ew_worker *w, struct ew_sample *out, uint32_t max);

/* What the poll loops did, summed over lcores. */
struct ew_worker_stats {
    uint64_t received;
    uint64_t passed;
    uint64_t dropped;
    uint64_t answered;
    uint64_t tx_failed;     /* passed, but the paired port's queue was full: freed */
    uint64_t cpu_ns;        /* CPU time of the poll loops (set when they end): pps per lcore on a shared machine */
};
void ew_worker_stats(struct ew_worker *w, struct ew_worker_stats *out);

#endif /* EW_DPDK_WORKER_H */
