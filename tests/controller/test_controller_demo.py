"""The controller part of `make demo` runs end to end and leaves a policy the agent accepts."""

from agent.policy import load_policy
from controller.demo import run_controller_demo


def test_controller_demo(tmp_path):
    report = run_controller_demo(tmp_path, echo=False)
    assert "tenant 1 (shop) registered" in report and "audit chain intact" in report
    policy = load_policy(tmp_path / "controller-policy.toml")
    assert policy.revision == 4
    assert policy.tenant(3).suspended and [str(n) for n in policy.tenant(1).blocked_sources] == ["198.51.100.70/32"]
    assert [str(n) for n in policy.blocked_sources] == ["198.51.100.200/32", "203.0.113.200/29"]
