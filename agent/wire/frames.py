"""The frame layer of the agent<->controller protocol: a 4-byte big-endian
length, then that many bytes of msgpack. The one place that knows the frame
size limit and how bytes become Python values (and the reverse)."""

from __future__ import annotations

import struct

import msgpack

PROTOCOL_VERSION = 1
LENGTH = struct.Struct(">I")
HEADER_SIZE = LENGTH.size
# Snapshot chunks are cut well below this (snapshot.CHUNK_RECORD_BYTES), so
# the limit is about refusing a hostile length early, not about big lists.
MAX_FRAME_SIZE = 1 << 20
# Nesting deeper than any message needs is refused before msgpack recurses.
MAX_CONTAINER_LEN = MAX_FRAME_SIZE


class FrameError(Exception):
    """A frame that cannot be read: `code` is a CloseReason value, the message says what and where."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def _no_ext(code: int, data: bytes):
    raise FrameError("malformed_frame", f"msgpack extension type {code} is not part of the protocol")


def pack(value) -> bytes:
    """msgpack bytes of a value made of None, bool, int, str, bytes, list and dict."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(body: bytes):
    """The value of one frame body; FrameError if it is not exactly one msgpack value."""
    try:
        return msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False, ext_hook=_no_ext,
                               max_str_len=MAX_FRAME_SIZE,
                               max_bin_len=MAX_FRAME_SIZE, max_array_len=MAX_CONTAINER_LEN,
                               max_map_len=MAX_CONTAINER_LEN, max_ext_len=0)
    except FrameError:
        raise
    except Exception as err:   # msgpack raises ValueError, TypeError, UnicodeDecodeError, its own errors
        raise FrameError("malformed_frame", f"frame body is not valid msgpack ({type(err).__name__}: {err})") \
            from None


def encode_frame(value) -> bytes:
    body = pack(value)
    if len(body) > MAX_FRAME_SIZE:
        raise ValueError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME_SIZE}-byte limit; "
                         f"large lists go in snapshot chunks")
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Bytes in, frame bodies out. After the first FrameError the decoder is
    dead (the connection closes): a stream cannot be resynchronised."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE):
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._offset = 0
        self._scanned = 0      # complete frames before this index were looked at by take_first

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._offset

    def next_body(self) -> bytes | None:
        """The next complete frame body, or None until more bytes arrive."""
        if self.buffered < HEADER_SIZE:
            return None
        (length,) = LENGTH.unpack_from(self._buffer, self._offset)
        if length == 0:
            raise FrameError("malformed_frame", "frame of length 0 (every frame holds one message)")
        if length > self.max_frame_size:
            raise FrameError("frame_too_large",
                             f"frame of {length} bytes exceeds the {self.max_frame_size}-byte limit")
        if self.buffered < HEADER_SIZE + length:
            return None
        start = self._offset + HEADER_SIZE
        body = bytes(self._buffer[start:start + length])
        self._offset = start + length
        self._scanned = max(self._scanned, self._offset)
        if self._offset > 1 << 16 and self._offset * 2 > len(self._buffer):
            del self._buffer[:self._offset]   # compact now and then, not per frame
            self._scanned -= self._offset
            self._offset = 0
        return body

    def take_first(self, body_prefix: bytes) -> bytes | None:
        """The first complete buffered frame whose body starts with
        `body_prefix`, taken out of the stream ahead of the frames before it
        (so an urgent message overtakes a backlog the receiver has not
        processed yet). Frame headers are read once; bodies are not decoded."""
        buf, at = self._buffer, max(self._scanned, self._offset)
        while len(buf) - at >= HEADER_SIZE:
            (length,) = LENGTH.unpack_from(buf, at)
            if length == 0 or length > self.max_frame_size or len(buf) - at - HEADER_SIZE < length:
                break   # incomplete, or an error next_body will report in its turn
            start = at + HEADER_SIZE
            if buf[start:start + len(body_prefix)] == body_prefix:
                body = bytes(buf[start:start + length])
                del buf[at:start + length]
                self._scanned = at
                return body
            at = start + length
        self._scanned = at
        return None
