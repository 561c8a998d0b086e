"""What the asyncio client and server share: one connection state machine
over one stream, a writer task draining its outbox by priority, and reads
only when the user asks for the next event."""

from __future__ import annotations

import asyncio

from agent.wire.connection import ConnectionClosed, ConnectionState
from agent.wire.messages import Close, CloseReason
from agent.wire.outbox import PRIORITY_REPORT, Outbox
from agent.wire.transport import frame_priority

READ_SIZE = 256 * 1024
FLUSH_TIMEOUT = 5.0
PRIORITY_FINAL = -1      # a Close goes after every frame queued before it


class StreamPeer:
    def __init__(self, conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.conn, self.reader, self.writer = conn, reader, writer
        self.outbox = Outbox()
        self._wake = asyncio.Event()
        self._final: bytes | None = None
        self._writer_task = asyncio.create_task(self._write_loop())

    def _put(self, data: bytes, priority: int) -> None:
        self.outbox.put(data, priority)
        self._wake.set()

    def _put_automatic(self) -> None:
        data = self.conn.data_to_send()
        if data:
            # the machine's own frames: a Reject, or a Close after a protocol error (nothing goes after it)
            if self.conn.state is ConnectionState.CLOSED:
                self.outbox = Outbox()
                self._final = data
            self._put(data, PRIORITY_REPORT)

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
            self._put(frame, PRIORITY_FINAL)
        else:
            self._put(frame, frame_priority(msg))

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            self._put_automatic()
            if event is not None:
                if isinstance(event, ConnectionClosed):
                    await self._finish()
                return event
            if self.conn.state is ConnectionState.CLOSED:
                return self.conn.close_reason
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            self.conn.receive_data(data)

    async def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> None:
        if self.conn.state is not ConnectionState.CLOSED:
            self.queue(Close(reason.value, message))
        await self._finish()

    async def _finish(self) -> None:
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._writer_task), FLUSH_TIMEOUT)
        except asyncio.TimeoutError:
            self._writer_task.cancel()
        self.writer.close()
