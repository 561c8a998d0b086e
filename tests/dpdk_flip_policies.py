"""Run by test_dpdk_swap.py in its own process (one EAL per process): the
engine on a net_pcap device that replays its capture forever, while this
process swaps between two policies FLIPS times; prints the final report as
JSON. Usage: dpdk_flip_policies.py CONFIG POLICY_A POLICY_B FLIPS"""

import json
import sys
import time

from agent.dpdk.config import load_config
from agent.dpdk.run import run_engine
from agent.policy import load_policy


def main() -> None:
    config, a, b, flips = load_config(sys.argv[1]), load_policy(sys.argv[2]), load_policy(sys.argv[3]), int(sys.argv[4])
    seen_before_first_flip = {}

    def flip(engine) -> None:
        time.sleep(0.05)
        seen_before_first_flip.update(engine.stats().as_dict())
        for i in range(flips):
            engine.apply(b if i % 2 == 0 else a)
            time.sleep(0.003)
        engine.stop()

    report = run_engine(config, policy=a, seconds=120, on_running=flip)
    print(json.dumps({**report.as_dict(), "before_flips": seen_before_first_flip}))


if __name__ == "__main__":
    main()
