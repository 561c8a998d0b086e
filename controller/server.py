"""Running the controller: migrations at start, the API under uvicorn on
uvloop, the expiry loop, and READY=1 to systemd only once the socket serves."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import uvicorn

from controller.api import create_app
from controller.config import Settings
from controller.ratelimit import FailedAuthLimiter
from controller.revisions import expire_due
from controller.store import backend, migrate, open_engine

log = logging.getLogger("edgewarden.controller")


def sd_notify(message: str) -> bool:
    """systemd's notify protocol (sd_notify(3)); a no-op outside a Type=notify unit."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


class ControllerServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings, engine):
        super().__init__(config)
        self.settings, self.engine = settings, engine

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            host, port = self.settings.host_port
            log.info("controller serving on %s:%d, store %s", host, port, backend(self.engine))
            sd_notify("READY=1\nSTATUS=serving")
            asyncio.get_running_loop().create_task(self._expiry_loop())
            # deadlines and deliveries in loops of their own: a relay that hangs until its
            # timeout must not hold up a suspension that is due
            asyncio.get_running_loop().create_task(self._workflow_loop("deadlines", "run_due"))
            asyncio.get_running_loop().create_task(self._workflow_loop("notifications", "deliver"))

    async def _expiry_loop(self):
        while not self.should_exit:
            try:
                made = await asyncio.to_thread(expire_due, self.engine)
                if made:
                    log.info("expired block entries left the policy: revision(s) %s", ", ".join(map(str, made)))
            except Exception:   # the loop must outlive one bad pass; the next one retries
                log.exception("expiry pass failed")
            await asyncio.sleep(self.settings.expiry_interval_seconds)

    async def _workflow_loop(self, what: str, method: str):
        """The enforcement workflow's due deadlines, or its notification outbox (controller.workflow)."""
        step = getattr(self.config.app.state.workflow, method)
        while not self.should_exit:
            try:
                done = await asyncio.to_thread(step)
                if done and what == "deadlines":
                    log.info("workflow deadlines acted on: %s", done)
            except Exception:   # the loop must outlive one bad pass; the next one retries
                log.exception("workflow %s pass failed", what)
            await asyncio.sleep(self.settings.workflow_interval_seconds)


def run(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = open_engine(settings.database)
    log.info("store schema at %s", migrate(engine))
    limiter = FailedAuthLimiter(settings.max_failures, settings.failure_window_seconds)
    from controller.workflow import RuleBook, Workflow
    workflow = Workflow(engine, RuleBook.from_file(settings.rules or None))
    app = create_app(engine, limiter=limiter, workflow=workflow)
    host, port = settings.host_port
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", log_level=settings.log_level,
                            access_log=False, proxy_headers=False)
    server = ControllerServer(config, settings, engine)
    server.run()
    sd_notify("STOPPING=1")
    return 0
