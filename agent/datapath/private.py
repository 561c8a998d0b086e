"""The real XDP program with private, unpinned maps, driven by
BPF_PROG_TEST_RUN: nothing is attached and nothing is sent. Used by
`edgewarden classify`, the datapath tests and the benchmarks."""

from __future__ import annotations

from agent.datapath.apply import ApplyReport, apply_policy_to_maps
from agent.datapath.counters import TenantCounters, read_counters
from agent.datapath.program import LoadedProgram
from agent.datapath.syscalls import test_run
from agent.policy.model import Policy


class PrivateDatapath:
    def __init__(self, policy: Policy | None = None, object_file=None, tenant_capacity: int | None = None):
        """`object_file`: another build of the datapath (tests). `tenant_capacity`: as for LoadedProgram."""
        self.program = LoadedProgram(pin_dir=None, object_file=object_file, tenant_capacity=tenant_capacity)
        self.last_apply: ApplyReport | None = None
        if policy is not None:
            self.apply(policy)

    def apply(self, policy: Policy) -> ApplyReport:
        self.last_apply = apply_policy_to_maps(self.program.maps, policy, conntrack=self.program.conntrack)
        return self.last_apply

    def run(self, frame: bytes) -> int:
        """The XDP action the program returns for one frame."""
        return test_run(self.program.prog_fd, frame).retval

    def run_with_output(self, frame: bytes) -> tuple[int, bytes]:
        """The XDP action and the frame as the program left it (an answer, for XDP_TX)."""
        result = test_run(self.program.prog_fd, frame, want_data=True)
        return result.retval, result.data_out

    def time_per_packet_ns(self, frame: bytes, repeat: int) -> float:
        return test_run(self.program.prog_fd, frame, repeat).duration_ns

    def counters(self) -> dict[int, TenantCounters]:
        return read_counters(self.program.maps)

    def close(self) -> None:
        self.program.close()

    def __enter__(self) -> "PrivateDatapath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
