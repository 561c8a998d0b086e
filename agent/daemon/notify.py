"""systemd's notify protocol (sd_notify(3)): one datagram per state change
on the unix socket named by $NOTIFY_SOCKET. Outside systemd (no variable)
every call is a no-op, so the daemon behaves the same in a terminal."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock = None
        self._address = None
        if address:
            # "@name" is an abstract socket: a leading NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        if self._sock is None:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError:
            pass   # systemd gone or socket full: the next heartbeat tries again

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, status: str) -> None:
        self.send(status=status)

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def reloading(self) -> None:
        self.send(reloading=1)

    def stopping(self) -> None:
        self.send(stopping=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WatchdogSec (as sd_watchdog_enabled(3) advises), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
