/* The DPDK worker (see worker.h). Each worker lcore polls one queue of every
 * port, judges a burst with the policy snapshot current when the burst
 * arrived (datapath.c runs the XDP program's code on it), sends what passes
 * out of the paired port, frees the drops in bulk, and reports a quiescent
 * state after the burst; a publish waits for that before freeing the old
 * snapshot. The main lcore stays with the caller (the agent's control). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <limits.h>
#include <unistd.h>

#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_prefetch.h>
#include <rte_rcu_qsbr.h>

#include <linux/bpf.h>      /* XDP_PASS, XDP_TX: the actions the datapath returns */
#include "worker.h"

#define EW_MAX_BURST 64
#define EW_RING_SIZE 1024

static char last_error[1024];

static void set_error(const char *fmt, ...)
{
    va_list args;

    va_start(args, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, args);
    va_end(args);
}

const char *ew_last_error(void)
{
    return last_error;
}

/* ---- clock ------------------------------------------------------------- */

static uint64_t tsc_hz;
static uint64_t test_clock_ns;

void ew_clock_init(uint64_t hz)
{
    tsc_hz = hz ? hz : 1;
}

void ew_set_test_clock(uint64_t ns)
{
    __atomic_store_n(&test_clock_ns, ns, __ATOMIC_RELAXED);
}

/* bpf_ktime_get_ns: monotonic ns from the TSC, never 0 (0 marks a bucket never used). */
uint64_t ew_clock_ns(void)
{
    uint64_t fixed = __atomic_load_n(&test_clock_ns, __ATOMIC_RELAXED), cycles, ns;

    if (fixed)
        return fixed;
    cycles = rte_get_tsc_cycles();
    ns = (cycles / tsc_hz) * 1000000000ULL + (cycles % tsc_hz) * 1000000000ULL / tsc_hz;
    return ns ? ns : 1;
}

int ew_packet_read(void *packet, uint32_t offset, uint32_t length, void *out)
{
    struct rte_mbuf *m = packet;
    const void *p;

    if (!m || (uint64_t)offset + length > rte_pktmbuf_pkt_len(m))
        return 0;
    p = rte_pktmbuf_read(m, offset, length, out);
    if (p && p != out)
        memcpy(out, p, length);
    return p != NULL;
}

/* ---- EAL ---------------------------------------------------------------- */

int ew_eal_init(int argc, char **argv)
{
    int rc = rte_eal_init(argc, argv);

    if (rc < 0) {
        set_error("the DPDK EAL did not start: %s (rte_errno %d); check the [eal] arguments",
                  rte_strerror(rte_errno), rte_errno);
        return -1;
    }
    ew_clock_init(rte_get_tsc_hz());
    return rc;
}

/* rte_eal_cleanup, then the EAL's runtime directory (empty with
 * --no-shconf) so runs leave nothing under /var/run/dpdk. */
void ew_eal_cleanup(void)
{
    char dir[PATH_MAX];

    snprintf(dir, sizeof(dir), "%s", rte_eal_get_runtime_dir());
    rte_eal_cleanup();
    if (dir[0])
        rmdir(dir);
}

int ew_port_by_name(const char *name, uint16_t *port)
{
    if (rte_eth_dev_get_port_by_name(name, port) != 0) {
        set_error("no DPDK port named %s (%u ports are probed): check its vdev or PCI address in the config",
                  name, rte_eth_dev_count_avail());
        return -1;
    }
    return 0;
}

uint32_t ew_worker_lcore_count(void)
{
    return rte_lcore_count() > 0 ? rte_lcore_count() - 1 : 0;
}

/* ---- worker ------------------------------------------------------------- */

struct port_plan {
    uint16_t port;
    uint16_t pass_to;
    int judge;
};

struct lcore_state {
    struct ew_worker *worker;
    unsigned int lcore_id;
    uint32_t index;                 /* RCU thread id, counter row, queue number */
    struct ew_source_cache sources;
    struct ew_worker_stats stats;
    struct ew_trace trace;
    struct ew_sample_ring *samples;             /* evidence, drained by ew_worker_read_samples */
    struct ew_sample_budget *sample_budgets;    /* [slots] */
} __rte_cache_aligned;

struct ew_worker {
    uint32_t slots, mbufs, burst, nports, nlcores;
    uint16_t queues;
    struct rte_mempool *pool;
    struct port_plan ports[RTE_MAX_ETHPORTS];
    struct lcore_state *lcores;
    struct ew_counters *counters;   /* [nlcores][slots] */
    struct ew_bucket *buckets;      /* [slots x EW_BUCKET_KINDS] */
    struct ew_snapshot *current;
    struct rte_rcu_qsbr *qsbr;
    struct ew_sample_config sample_config;      /* 0 samples per second until the agent sets it */
    int started, stop;
    uint64_t max_packets, received_total, swaps;
};

struct ew_worker *ew_worker_new(uint32_t slots, uint32_t mbufs, uint32_t burst, uint32_t source_buckets)
{
    struct ew_worker *w;
    uint32_t nlcores = ew_worker_lcore_count(), i = 0;
    unsigned int lcore_id;
    size_t qsbr_size;

    if (nlcores == 0) {
        set_error("the EAL has no worker lcore: give it at least two (e.g. lcores = \"0,1\"); the main "
                  "lcore runs the agent's control, the others poll the ports");
        return NULL;
    }
    if (slots == 0 || burst == 0 || burst > EW_MAX_BURST) {
        set_error("bad worker sizes: slots %u, burst %u (1..%d)", slots, burst, EW_MAX_BURST);
        return NULL;
    }
    w = calloc(1, sizeof(*w));
    if (!w)
        goto oom;
    w->slots = slots;
    w->mbufs = mbufs;
    w->burst = burst;
    w->nlcores = nlcores;
    w->lcores = rte_zmalloc("ew_lcores", sizeof(*w->lcores) * nlcores, RTE_CACHE_LINE_SIZE);
    w->counters = calloc((size_t)nlcores * slots, sizeof(struct ew_counters));
    w->buckets = calloc((size_t)slots * EW_BUCKET_KINDS, sizeof(struct ew_bucket));
    w->current = ew_snapshot_new(slots);
    qsbr_size = rte_rcu_qsbr_get_memsize(nlcores);
    w->qsbr = rte_zmalloc("ew_qsbr", qsbr_size, RTE_CACHE_LINE_SIZE);
    if (!w->lcores || !w->counters || !w->buckets || !w->current || !w->qsbr)
        goto oom;
    rte_rcu_qsbr_init(w->qsbr, nlcores);
    RTE_LCORE_FOREACH_WORKER(lcore_id) {
        struct lcore_state *ls = &w->lcores[i];

        ls->worker = w;
        ls->lcore_id = lcore_id;
        ls->index = i++;
        if (ew_source_cache_init(&ls->sources, source_buckets ? source_buckets : 1024) < 0)
            goto oom;
        ls->samples = calloc(1, sizeof(*ls->samples));
        ls->sample_budgets = calloc(slots, sizeof(*ls->sample_budgets));
        if (!ls->samples || !ls->sample_budgets)
            goto oom;
    }
    return w;
oom:
    set_error("out of memory for the worker's tables (%u counter slots x %u lcores); give the EAL more "
              "memory (-m) or lower engine.tenant_capacity", slots, nlcores);
    ew_worker_free(w);
    return NULL;
}

int ew_worker_add_port(struct ew_worker *w, uint16_t port, uint16_t pass_to, int judge)
{
    if (w->started || w->nports >= RTE_MAX_ETHPORTS || !rte_eth_dev_is_valid_port(port) ||
        !rte_eth_dev_is_valid_port(pass_to)) {
        set_error("cannot add port %u (passing to %u): not a valid port, or the worker runs", port, pass_to);
        return -1;
    }
    w->ports[w->nports++] = (struct port_plan){ .port = port, .pass_to = pass_to, .judge = judge };
    return 0;
}

static int worker_uses_port(const struct ew_worker *w, uint16_t port, uint32_t before)
{
    for (uint32_t i = 0; i < before; i++)
        if (w->ports[i].port == port || w->ports[i].pass_to == port)
            return 1;
    return 0;
}

static int setup_port(struct ew_worker *w, uint16_t port)
{
    struct rte_eth_conf conf;
    uint16_t rx_ring = EW_RING_SIZE, tx_ring = EW_RING_SIZE;
    char name[RTE_ETH_NAME_MAX_LEN] = "?";
    int rc, socket = rte_eth_dev_socket_id(port);

    rte_eth_dev_get_name_by_port(port, name);
    memset(&conf, 0, sizeof(conf));
    if ((rc = rte_eth_dev_configure(port, w->queues, w->queues, &conf)) < 0) {
        set_error("port %s: configuring %u queues failed: %s", name, w->queues, rte_strerror(-rc));
        return -1;
    }
    rte_eth_dev_adjust_nb_rx_tx_desc(port, &rx_ring, &tx_ring);
    for (uint16_t q = 0; q < w->queues; q++) {
        if ((rc = rte_eth_rx_queue_setup(port, q, rx_ring, socket < 0 ? SOCKET_ID_ANY : socket, NULL, w->pool)) < 0 ||
            (rc = rte_eth_tx_queue_setup(port, q, tx_ring, socket < 0 ? SOCKET_ID_ANY : socket, NULL)) < 0) {
            set_error("port %s: queue %u setup failed: %s", name, q, rte_strerror(-rc));
            return -1;
        }
    }
    if ((rc = rte_eth_dev_start(port)) < 0) {
        set_error("port %s did not start: %s", name, rte_strerror(-rc));
        return -1;
    }
    rte_eth_promiscuous_enable(port);      /* not every PMD has it; frames to other MACs are the rule here */
    return 0;
}

static void send_or_free(struct lcore_state *ls, uint16_t port, uint16_t queue, struct rte_mbuf **pkts,
                         uint16_t count)
{
    uint16_t sent = count ? rte_eth_tx_burst(port, queue, pkts, count) : 0;

    if (sent < count) {
        rte_pktmbuf_free_bulk(pkts + sent, count - sent);
        ls->stats.tx_failed += count - sent;
    }
}

static int lcore_main(void *arg)
{
    struct lcore_state *ls = arg;
    struct ew_worker *w = ls->worker;
    struct rte_mbuf *rx[EW_MAX_BURST], *pass[EW_MAX_BURST], *back[EW_MAX_BURST], *drop[EW_MAX_BURST];
    struct ew_frame_ref frames[EW_MAX_BURST];
    struct ew_view view = {
        .counters = w->counters + (size_t)ls->index * w->slots,
        .slots = w->slots,
        .buckets = w->buckets,
        .sources = &ls->sources,
        .trace = ls->trace.capacity ? &ls->trace : NULL,
        .samples = ls->samples,
        .sample_budgets = ls->sample_budgets,
        .sample_config = &w->sample_config,
    };
    uint16_t queue = ls->index;
    struct timespec cpu_start, cpu_end;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_start);
    rte_rcu_qsbr_thread_register(w->qsbr, ls->index);
    rte_rcu_qsbr_thread_online(w->qsbr, ls->index);
    while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
        for (uint32_t p = 0; queue < w->queues && p < w->nports; p++) {
            const struct port_plan *plan = &w->ports[p];
            uint16_t n = rte_eth_rx_burst(plan->port, queue, rx, w->burst), np = 0, nb = 0, nd = 0;

            if (n == 0)
                continue;
            ls->stats.received += n;
            if (!plan->judge) {
                send_or_free(ls, plan->pass_to, queue, rx, n);
                ls->stats.passed += n;
            } else {
                /* One snapshot for the whole burst; released by the quiescent state below. */
                view.snapshot = __atomic_load_n(&w->current, __ATOMIC_ACQUIRE);
                view.port = plan->port;
                /* Headers of the whole burst on their way into the cache before the first is parsed. */
                for (uint16_t i = 0; i < n; i++)
                    rte_prefetch0(rte_pktmbuf_mtod(rx[i], void *));
                for (uint16_t i = 0; i < n; i++) {
                    frames[i].packet = rx[i];
                    frames[i].data = rte_pktmbuf_mtod(rx[i], void *);
                    frames[i].length = rte_pktmbuf_data_len(rx[i]);
                    frames[i].packet_length = rte_pktmbuf_pkt_len(rx[i]);
                }
                ew_judge_burst(&view, frames, n);
                for (uint16_t i = 0; i < n; i++) {
                    if (frames[i].action == XDP_PASS)
                        pass[np++] = rx[i];
                    else if (frames[i].action == XDP_TX)
                        back[nb++] = rx[i];
                    else
                        drop[nd++] = rx[i];
                }
                send_or_free(ls, plan->pass_to, queue, pass, np);
                send_or_free(ls, plan->port, queue, back, nb);
                if (nd)
                    rte_pktmbuf_free_bulk(drop, nd);
                ls->stats.passed += np;
                ls->stats.answered += nb;
                ls->stats.dropped += nd;
            }
            if (w->max_packets &&
                __atomic_add_fetch(&w->received_total, n, __ATOMIC_RELAXED) >= w->max_packets)
                __atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
        }
        rte_rcu_qsbr_quiescent(w->qsbr, ls->index);
    }
    rte_rcu_qsbr_thread_offline(w->qsbr, ls->index);
    rte_rcu_qsbr_thread_unregister(w->qsbr, ls->index);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_end);
    ls->stats.cpu_ns = (uint64_t)(cpu_end.tv_sec - cpu_start.tv_sec) * 1000000000ULL + cpu_end.tv_nsec - cpu_start.tv_nsec;
    return 0;
}

int ew_worker_start(struct ew_worker *w, uint64_t max_packets)
{
    struct rte_eth_dev_info info;
    char cache[64];
    int rc;

    if (w->started || w->nports == 0) {
        set_error(w->started ? "the worker already runs" : "the worker has no ports: add [[ports]] to the config");
        return -1;
    }
    w->queues = w->nlcores;
    for (uint32_t i = 0; i < w->nports; i++) {
        uint16_t ports[2] = { w->ports[i].port, w->ports[i].pass_to };

        for (int k = 0; k < 2; k++) {
            if ((rc = rte_eth_dev_info_get(ports[k], &info)) != 0) {
                set_error("port %u: no device info: %s", ports[k], rte_strerror(-rc));
                return -1;
            }
            w->queues = RTE_MIN(w->queues, RTE_MIN(info.max_rx_queues, info.max_tx_queues));
        }
    }
    if (w->queues == 0) {
        set_error("a port has no rx or tx queue");
        return -1;
    }
    snprintf(cache, sizeof(cache), "ew_mbufs_%p", (void *)w);
    w->pool = rte_pktmbuf_pool_create(cache, w->mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
    if (!w->pool) {
        set_error("cannot allocate %u packet buffers: %s; give the EAL more memory (-m, or hugepages) or "
                  "lower engine.mbufs", w->mbufs, rte_strerror(rte_errno));
        return -1;
    }
    for (uint32_t i = 0; i < w->nports; i++) {
        uint16_t ports[2] = { w->ports[i].port, w->ports[i].pass_to };

        for (int k = 0; k < 2; k++)
            if (!worker_uses_port(w, ports[k], i) && !(k == 1 && ports[1] == ports[0]) && setup_port(w, ports[k]) < 0)
                return -1;
    }
    w->max_packets = max_packets;
    w->stop = 0;
    w->started = 1;
    for (uint32_t i = 0; i < w->nlcores; i++)
        if ((rc = rte_eal_remote_launch(lcore_main, &w->lcores[i], w->lcores[i].lcore_id)) != 0) {
            set_error("cannot launch the poll loop on lcore %u: %s", w->lcores[i].lcore_id, rte_strerror(-rc));
            ew_worker_stop(w);
            ew_worker_wait(w);
            return -1;
        }
    return 0;
}

int ew_worker_enable_trace(struct ew_worker *w, uint32_t capacity)
{
    if (w->started) {
        set_error("tracing is set before the worker starts");
        return -1;
    }
    for (uint32_t i = 0; i < w->nlcores; i++) {
        struct ew_trace *t = &w->lcores[i].trace;

        free(t->entries);
        t->entries = calloc(capacity, sizeof(*t->entries));
        if (!t->entries) {
            set_error("out of memory for a trace of %u packets", capacity);
            return -1;
        }
        t->capacity = capacity;
        t->count = 0;
    }
    return 0;
}

int ew_worker_read_trace(struct ew_worker *w, uint32_t lcore, struct ew_trace_entry *out, uint32_t max)
{
    const struct ew_trace *t;
    uint32_t n;

    if (lcore >= w->nlcores) {
        set_error("no worker lcore %u", lcore);
        return -1;
    }
    t = &w->lcores[lcore].trace;
    n = RTE_MIN(t->count, max);
    memcpy(out, t->entries, n * sizeof(*out));
    return (int)n;
}

int ew_worker_running(struct ew_worker *w)
{
    return w->started && !__atomic_load_n(&w->stop, __ATOMIC_RELAXED);
}

void ew_worker_stop(struct ew_worker *w)
{
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
}

int ew_worker_wait(struct ew_worker *w)
{
    if (!w->started)
        return 0;
    rte_eal_mp_wait_lcore();
    for (uint32_t i = 0; i < w->nports; i++) {
        uint16_t ports[2] = { w->ports[i].port, w->ports[i].pass_to };

        for (int k = 0; k < 2; k++)
            if (!worker_uses_port(w, ports[k], i) && !(k == 1 && ports[1] == ports[0])) {
                rte_eth_dev_stop(ports[k]);
                rte_eth_dev_close(ports[k]);
            }
    }
    w->started = 0;
    return 0;
}

void ew_worker_free(struct ew_worker *w)
{
    if (!w)
        return;
    if (w->started) {
        ew_worker_stop(w);
        ew_worker_wait(w);
    }
    if (w->lcores)
        for (uint32_t i = 0; i < w->nlcores; i++) {
            ew_source_cache_free(&w->lcores[i].sources);
            free(w->lcores[i].trace.entries);
            free(w->lcores[i].samples);
            free(w->lcores[i].sample_budgets);
        }
    rte_free(w->lcores);
    rte_free(w->qsbr);
    free(w->counters);
    free(w->buckets);
    ew_snapshot_free(w->current);
    if (w->pool)
        rte_mempool_free(w->pool);
    free(w);
}

int ew_worker_publish(struct ew_worker *w, struct ew_snapshot *snapshot)
{
    struct ew_snapshot *old;

    if (!snapshot || snapshot->slots != w->slots) {
        set_error("snapshot sized for %u slots, the worker has %u", snapshot ? snapshot->slots : 0, w->slots);
        ew_snapshot_free(snapshot);
        return -1;
    }
    old = __atomic_exchange_n(&w->current, snapshot, __ATOMIC_ACQ_REL);
    /* Bursts that started before the exchange may still read `old`. */
    rte_rcu_qsbr_synchronize(w->qsbr, RTE_QSBR_THRID_INVALID);
    ew_snapshot_free(old);
    w->swaps++;
    return 0;
}

uint64_t ew_worker_swaps(struct ew_worker *w)
{
    return w->swaps;
}

int ew_worker_read_counters(struct ew_worker *w, uint32_t slot, void *out)
{
    if (slot >= w->slots) {
        set_error("counter slot %u is beyond the worker's %u", slot, w->slots);
        return -1;
    }
    for (uint32_t i = 0; i < w->nlcores; i++)
        memcpy((char *)out + i * sizeof(struct ew_counters), &w->counters[(size_t)i * w->slots + slot],
               sizeof(struct ew_counters));
    return 0;
}

int ew_worker_zero_counters(struct ew_worker *w, uint32_t slot)
{
    if (slot >= w->slots) {
        set_error("counter slot %u is beyond the worker's %u", slot, w->slots);
        return -1;
    }
    for (uint32_t i = 0; i < w->nlcores; i++)
        memset(&w->counters[(size_t)i * w->slots + slot], 0, sizeof(struct ew_counters));
    return 0;
}

uint32_t ew_worker_lcores(struct ew_worker *w)
{
    return w->nlcores;
}

uint32_t ew_worker_slots(struct ew_worker *w)
{
    return w->slots;
}

void ew_worker_stats(struct ew_worker *w, struct ew_worker_stats *out)
{
    memset(out, 0, sizeof(*out));
    for (uint32_t i = 0; i < w->nlcores; i++) {
        const struct ew_worker_stats *s = &w->lcores[i].stats;

        out->received += s->received;
        out->passed += s->passed;
        out->dropped += s->dropped;
        out->answered += s->answered;
        out->tx_failed += s->tx_failed;
        out->cpu_ns += s->cpu_ns;
    }
}

struct ew_sample_config *ew_worker_sample_config(struct ew_worker *w)
{
    return &w->sample_config;
}

uint32_t ew_worker_read_samples(struct ew_worker *w, struct ew_sample *out, uint32_t max)
{
    uint32_t n = 0;

    for (uint32_t i = 0; i < w->nlcores && n < max; i++) {
        struct ew_sample_ring *ring = w->lcores[i].samples;
        uint32_t head = __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE), tail = ring->tail;

        while (tail != head && n < max)
            memcpy(&out[n++], &ring->records[tail++ & (EW_DPDK_SAMPLE_RECORDS - 1)], sizeof(*out));
        __atomic_store_n(&ring->tail, tail, __ATOMIC_RELEASE);
    }
    return n;
}
