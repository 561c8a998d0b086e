"""The daemon's control socket: a root-only unix stream socket through
which the CLI's changing commands reach the one writer of the maps while
the daemon runs. One JSON request line, one JSON answer line. The peer's
credentials are checked (SO_PEERCRED): only root or the daemon's own user."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from pathlib import Path
from typing import Awaitable, Callable

from agent.daemon import journal

MAX_REQUEST_BYTES = 512 * 1024 * 1024      # a million-prefix list, base64


def default_socket_path() -> Path:
    from agent.datapath.scope import state_root
    return Path(os.environ.get("EDGEWARDEN_AGENT_SOCKET", state_root() / "agent.sock"))


class ControlError(RuntimeError):
    pass


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlServer:
    def __init__(self, path: Path, handle: Callable[[dict], Awaitable[dict]]):
        self.path = path
        self.handle = handle
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old_umask = os.umask(0o177)      # created 0600: never a moment with a wider mode
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            if uid not in (0, os.getuid()):
                answer = {"ok": False, "error": f"uid {uid} may not change enforcement (root only)"}
            else:
                line = await reader.readline()
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError as err:
                    answer = {"ok": False, "error": f"malformed request: {err}"}
                else:
                    del line        # a block load's line is megabytes: not held while it is applied
                    try:
                        answer = {"ok": True, "result": await self.handle(request)}
                    except Exception as err:       # every failure is answered, and the daemon goes on
                        answer = {"ok": False, "error": str(err)}
                        journal.warning("control request failed", event="control_error",
                                        command=request.get("command"), error=str(err))
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)


def request(path: Path, message: dict, timeout: float = 600.0) -> dict:
    """Send one request to a running daemon; ControlError if none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as err:
            raise ControlError(f"no agent is listening on {path} ({err.strerror})") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise ControlError(f"the agent on {path} closed the connection without an answer")
    answer = json.loads(raw)
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "the agent refused the request"))
    return answer["result"]


def daemon_listening(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False
