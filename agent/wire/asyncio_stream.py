"""What the asyncio client and server share: one connection state machine
over one stream, a reader task feeding it whatever arrives (up to a
backlog limit), and a writer task draining its outbox by priority."""

from __future__ import annotations

import asyncio
import socket

from agent.wire.connection import ConnectionClosed, ConnectionState, SnapshotProgress
from agent.wire.keepalive import detect_dead_peer
from agent.wire.messages import Close, CloseReason
from agent.wire.outbox import PRIORITY_REPORT, Outbox
from agent.wire.transport import frame_priority

# Read whatever has arrived (up to this), so frames that overtake others
# (emergency blocks) are seen while a backlog of chunks is still unprocessed.
READ_SIZE = 8 * 1024 * 1024
READ_BACKLOG = 16 * 1024 * 1024   # received but unprocessed bytes before reading pauses
FLUSH_TIMEOUT = 5.0
PRIORITY_FINAL = -1      # a Close goes after every frame queued before it
# Frames wait in the outbox, where priorities apply, not in kernel or
# transport buffers, where they do not: the socket is writable only while
# less than this is unsent (TCP_NOTSENT_LOWAT keeps the congestion window).
UNSENT_LIMIT = 128 * 1024
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def _keep_queues_short(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, UNSENT_LIMIT)
        except OSError:
            pass   # an old kernel: priorities then apply to what is not yet in the socket
    writer.transport.set_write_buffer_limits(high=UNSENT_LIMIT)


class StreamPeer:
    def __init__(self, conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.conn, self.reader, self.writer = conn, reader, writer
        _keep_queues_short(writer)
        detect_dead_peer(writer.get_extra_info("socket"))
        self.outbox = Outbox()
        self._wake = asyncio.Event()
        self._final: bytes | None = None
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._writer_task = asyncio.create_task(self._write_loop())
        self._reader_task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        while self.conn.state is not ConnectionState.CLOSED:
            if self.conn.buffered_bytes > READ_BACKLOG:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            self.conn.receive_data(data)
            self._arrived.set()
            if not data:
                return

    def put_frames(self, data, priority: int) -> None:
        """Queue ready frames (bytes, or an iterable of them) at `priority` (outbox.py)."""
        if (isinstance(data, bytes) and not self.outbox and self._final is None and priority != PRIORITY_FINAL
                and self.conn.state is not ConnectionState.CLOSED and not self.writer.transport.is_closing()
                and self.writer.transport.get_write_buffer_size() == 0):
            # Nothing waits and nothing is unsent: the writer task would write this
            # frame first anyway. Writing it here saves waking that task, per
            # agent per revision (the controller's fan-out, the agent's ack).
            self.writer.write(data)
            return
        self.outbox.put(data, priority)
        self._wake.set()

    def _put_automatic(self) -> None:
        data = self.conn.data_to_send()
        if data:
            # the machine's own frames: a Reject, or a Close after a protocol error (nothing goes after it)
            if self.conn.state is ConnectionState.CLOSED:
                self.outbox = Outbox()
                self._final = data
            self.put_frames(data, PRIORITY_REPORT)

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = self.outbox.pop()
                if frame is None:
                    if self.conn.state is ConnectionState.CLOSED:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self.writer.write(frame)
                await self.writer.drain()
                if frame is self._final:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.writer.close()

    def queue(self, msg) -> None:
        frame = self.conn.send(msg)
        if isinstance(msg, Close):
            self._final = frame
            self.put_frames(frame, PRIORITY_FINAL)
        else:
            self.put_frames(frame, frame_priority(msg))

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            self._room.set()
            self._put_automatic()
            if event is not None:
                if isinstance(event, SnapshotProgress):
                    await asyncio.sleep(0)   # the reader's turn: an emergency block may be arriving
                elif isinstance(event, ConnectionClosed):
                    await self._finish()
                return event
            if self.conn.state is ConnectionState.CLOSED:
                return self.conn.close_reason
            self._arrived.clear()
            await self._arrived.wait()

    async def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> None:
        if self.conn.state is not ConnectionState.CLOSED:
            self.queue(Close(reason.value, message))
        await self._finish()

    async def _finish(self) -> None:
        self._reader_task.cancel()
        self._arrived.set()    # a next_event() waiting for bytes returns the close instead of waiting forever
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._writer_task), FLUSH_TIMEOUT)
        except asyncio.TimeoutError:
            self._writer_task.cancel()
        self.writer.close()
