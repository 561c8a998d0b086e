"""The running engine's control socket: one JSON request per connection,
one JSON reply. Ops: "policy" (the live document), "apply" (a document,
optionally only if the live revision is still `expect_revision`, so two
concurrent edits never lose one another), "load_list" / "unload_list" (a
named block list, as a serialized PrefixSet in hex), "lists", "stats"
(worker and per-tenant counters). Served from the engine's main thread, between its sleeps."""

from __future__ import annotations

import json
import os
import select
import socket
from pathlib import Path

MAX_REQUEST = 64 << 20


class ControlError(OSError):
    pass


class ControlServer:
    def __init__(self, path: Path, engine):
        self.path = Path(path)
        self.engine = engine
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.sock.listen(8)

    def serve(self, timeout: float) -> None:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            try:
                reply = self.handle(json.loads(_read_all(conn)))
            except Exception as error:      # any bad request gets an answer, the engine goes on
                reply = {"ok": False, "error": str(error)}
            conn.sendall(json.dumps(reply).encode())

    def handle(self, req: dict) -> dict:
        from agent.policy import policy_from_document, policy_to_document

        op = req.get("op")
        engine = self.engine
        if op == "policy":
            policy = engine.policy
            return {"ok": True, "policy": policy_to_document(policy) if policy else {"revision": 0}}
        if op == "apply":
            live = engine.policy.revision if engine.policy else 0
            if req.get("expect_revision") is not None and req["expect_revision"] != live:
                return {"ok": False, "error": f"the live policy changed meanwhile (revision {live}); try again"}
            policy = policy_from_document(req["policy"], "control request")
            engine.apply(policy)
            return {"ok": True, "revision": policy.revision}
        if op in ("load_list", "unload_list"):
            from agent._prefixes import PrefixSet
            from agent.datapath.named_lists import ListId, check_list_name
            list_id = ListId(check_list_name(req["name"]), req.get("tenant"))
            prefixes = PrefixSet.deserialize(bytes.fromhex(req["prefixes"])) if op == "load_list" else None
            engine.replace_named_list(list_id, prefixes)
            return {"ok": True, "list": str(list_id), "revision": engine.policy.revision}
        if op == "lists":
            return {"ok": True, "lists": {str(list_id): len(prefixes) for list_id, prefixes in
                                          sorted(engine.named_lists.items())}}
        if op == "stats":
            counters = engine.counters()
            return {"ok": True, "policy_revision": engine.policy.revision if engine.policy else 0,
                    **engine.stats().as_dict(), "tenants": [counters[t].as_dict() for t in sorted(counters)]}
        return {"ok": False, "error": f"unknown op {op!r} (policy, apply, load_list, unload_list, lists, stats)"}

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def _read_all(conn: socket.socket) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST:
            raise ControlError("request too large")


def request(path: str | Path, op: str, **body) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no DPDK engine answers on {path}: is `edgewarden dpdk run` running "
                               "with this config?") from None
        sock.sendall(json.dumps({"op": op, **body}).encode())
        sock.shutdown(socket.SHUT_WR)
        reply = json.loads(_read_all(sock))
    if not reply.get("ok"):
        raise ControlError(f"the DPDK engine refused {op}: {reply.get('error')}")
    return reply
