"""cffi API-mode build script for agent._dpdk: the DPDK worker (worker.c,
tables.c, and datapath.c, which is the XDP program compiled for the host)
against Debian's DPDK, found with pkg-config. The ABI structs come from
native/include/edgewarden_abi.h through the same reader as agent._libbpf."""

import shlex
import subprocess
import sys
from pathlib import Path

from cffi import FFI

DPDK_DIR = Path(__file__).resolve().parent
NATIVE_DIR = DPDK_DIR.parent
ROOT = NATIVE_DIR.parent
sys.path.insert(0, str(NATIVE_DIR))
from libbpf_build import ABI_HEADER, TYPEDEFS, abi_declarations  # noqa: E402

SOURCES = [DPDK_DIR / "worker.c", DPDK_DIR / "tables.c", DPDK_DIR / "datapath.c"]
DEPENDS = [*sorted(DPDK_DIR.glob("*.h")), *sorted((ROOT / "bpf").glob("*.[ch]")), ABI_HEADER]


def pkg_config(*args: str) -> list[str]:
    try:
        out = subprocess.run(["pkg-config", *args, "libdpdk"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise RuntimeError("building agent._dpdk needs pkg-config (make build installs it)") from None
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            "building agent._dpdk needs DPDK 22.11 (Debian: libdpdk-dev, make build installs it); "
            f"pkg-config libdpdk said: {error.stderr.strip()}") from None
    return shlex.split(out)


WORKER_DECLARATIONS = """
struct ew_snapshot;
struct ew_worker;

struct ew_worker_stats {
    uint64_t received;
    uint64_t passed;
    uint64_t dropped;
    uint64_t answered;
    uint64_t tx_failed;
    uint64_t cpu_ns;
    ...;
};

int ew_eal_init(int argc, char **argv);
const char *ew_last_error(void);
void ew_eal_cleanup(void);
int ew_port_by_name(const char *name, uint16_t *port);
uint32_t ew_worker_lcore_count(void);

struct ew_worker *ew_worker_new(uint32_t slots, uint32_t mbufs, uint32_t burst, uint32_t source_buckets);
int ew_worker_add_port(struct ew_worker *w, uint16_t port, uint16_t pass_to, int judge);
int ew_worker_start(struct ew_worker *w, uint64_t max_packets);
int ew_worker_running(struct ew_worker *w);
struct ew_trace_entry {
    uint32_t slot;
    uint8_t reason;
    uint8_t traffic_class;
    uint8_t action;
    uint8_t counted;
    ...;
};
int ew_worker_enable_trace(struct ew_worker *w, uint32_t capacity);
int ew_worker_read_trace(struct ew_worker *w, uint32_t lcore, struct ew_trace_entry *out, uint32_t max);
void ew_worker_stop(struct ew_worker *w);
int ew_worker_wait(struct ew_worker *w);
void ew_worker_free(struct ew_worker *w);
int ew_worker_publish(struct ew_worker *w, struct ew_snapshot *snapshot);
uint64_t ew_worker_swaps(struct ew_worker *w);
int ew_worker_read_counters(struct ew_worker *w, uint32_t slot, void *out);
int ew_worker_zero_counters(struct ew_worker *w, uint32_t slot);
uint32_t ew_worker_lcores(struct ew_worker *w);
uint32_t ew_worker_slots(struct ew_worker *w);
void ew_worker_stats(struct ew_worker *w, struct ew_worker_stats *out);
struct ew_sample_config *ew_worker_sample_config(struct ew_worker *w);
uint32_t ew_worker_read_samples(struct ew_worker *w, struct ew_sample *out, uint32_t max);

struct ew_snapshot *ew_snapshot_new(uint32_t slots);
int ew_snapshot_fill(struct ew_snapshot *snapshot, const char *map_name, const void *keys, const void *values,
                     uint32_t count, uint32_t key_size, uint32_t value_size, char *error, size_t error_size);
void ew_snapshot_free(struct ew_snapshot *snapshot);

void ew_set_test_clock(uint64_t ns);
uint64_t ew_clock_ns(void);
"""

cflags = pkg_config("--cflags")
libs = pkg_config("--libs")

ffibuilder = FFI()
ffibuilder.cdef(TYPEDEFS + abi_declarations(ABI_HEADER.read_text()) + WORKER_DECLARATIONS)
ffibuilder.set_source(
    "agent._dpdk",
    '#include "worker.h"\n',
    sources=[str(p.relative_to(ROOT)) for p in SOURCES],     # setuptools wants them relative (run from ROOT)
    include_dirs=[str(DPDK_DIR), str(NATIVE_DIR / "include"), str(ROOT / "bpf")],
    # The BPF headers use clang's loop pragmas and CO-RE attributes, which gcc ignores.
    # -fno-semantic-interposition: the datapath's global functions (edgewarden_xdp,
    # ew_packet_verdict) are not interposed by anyone, so the compiler may inline them
    # into the burst loop instead of calling each through the PLT once per packet.
    extra_compile_args=[*cflags, "-O3", "-fno-semantic-interposition", "-Wno-unknown-pragmas", "-Wno-attributes"],
    extra_link_args=libs,
    depends=[str(p.relative_to(ROOT)) for p in DEPENDS],
)

if __name__ == "__main__":
    import os
    os.chdir(ROOT)
    ffibuilder.compile(verbose=True)
