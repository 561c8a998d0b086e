"""The Internet checksum (RFC 1071), for frames the agent builds or rewrites."""

import struct


def internet_checksum(data: bytes) -> int:
    """Ones' complement of the ones' complement sum of 16-bit words; over data
    that includes a correct checksum field, the result is 0."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
