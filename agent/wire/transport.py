"""The one interface between the protocol's users and whatever carries its
frames: the agent daemon talks to a ControllerLink, the controller to one
AgentLink per agent. Today TLS streams carry them (asyncio_client,
asyncio_server); a NATS JetStream fan-out can implement the same two
interfaces later without touching the daemon's apply logic or the
controller's distribution logic."""

from __future__ import annotations

from typing import Protocol

from agent.wire.messages import CloseReason, Delta, EmergencyBlock, Hello, SnapshotBegin, Welcome
from agent.wire.outbox import PRIORITY_EMERGENCY, PRIORITY_POLICY, PRIORITY_REPORT, PRIORITY_SESSION


def frame_priority(msg) -> int:
    """Where a message goes in a connection's outbox (outbox.py)."""
    if isinstance(msg, (Hello, Welcome)):
        return PRIORITY_SESSION
    if isinstance(msg, EmergencyBlock):
        return PRIORITY_EMERGENCY + msg.priority
    if isinstance(msg, (Delta, SnapshotBegin)):
        return PRIORITY_POLICY
    return PRIORITY_REPORT


class ControllerLink(Protocol):
    """The agent's connection to its controller, after the welcome."""

    welcome: Welcome

    async def next_event(self):
        """The next AgentConnection event; ConnectionClosed is the last one."""

    async def send(self, msg) -> None:
        """Send one agent message (Ack, Reject, reports, DigestReport, EmergencyAck)."""

    async def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> None: ...


class AgentLink(Protocol):
    """The controller's connection to one agent, after its hello."""

    node: str
    hello: Hello

    async def next_event(self):
        """The next ControllerConnection event; ConnectionClosed is the last one."""

    def send(self, msg) -> None:
        """Queue one controller message; an EmergencyBlock overtakes queued policy frames."""

    def send_snapshot(self, encoded) -> None:
        """Queue an EncodedRevision's shared frames."""

    async def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> None: ...
