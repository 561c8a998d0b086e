"""One evidence file: pcapng (python-pcapng) with the node, incident and
tenant in the section comment, one interface block per interface the
samples came in on (its name, and the evidence's reason as description),
and each packet's tenant and verdict reason in its comment. Nanosecond
timestamps; packet_len keeps the frame's real length beside the captured
first bytes."""

from __future__ import annotations

from pathlib import Path

from pcapng import FileWriter, blocks

LINKTYPE_ETHERNET = 1


class EvidenceFile:
    def __init__(self, path: Path, *, node: str, incident: str, tenant_id: int, reason: str, snaplen: int,
                 opened_at: float):
        self.path = path
        self.opened_at = opened_at
        self.reason = reason
        self.packets = 0
        self._stream = open(path, "xb")
        self._shb = blocks.SectionHeader(options={
            "shb_userappl": "edgewarden agent",
            "opt_comment": f"edgewarden evidence; node={node}; incident={incident}; tenant={tenant_id}; "
                           f"reason={reason}"})
        self._snaplen = snaplen
        self._interfaces: dict[str, int] = {}
        self._writer = FileWriter(self._stream, self._shb)

    def _interface_id(self, ifname: str) -> int:
        if ifname not in self._interfaces:
            idb = self._shb.new_member(blocks.InterfaceDescription, link_type=LINKTYPE_ETHERNET, snaplen=self._snaplen,
                                       options={"if_name": ifname, "if_description": f"edgewarden: {self.reason}",
                                                "if_tsresol": b"\x09"})
            self._writer.write_block(idb)
            self._interfaces[ifname] = len(self._interfaces)
        return self._interfaces[ifname]

    def add(self, *, ifname: str, timestamp_ns: int, data: bytes, packet_length: int, comment: str) -> None:
        epb = self._shb.new_member(blocks.EnhancedPacket)
        epb.interface_id = self._interface_id(ifname)
        epb.timestamp_high, epb.timestamp_low = divmod(timestamp_ns, 2**32)
        epb.packet_data = data
        epb.packet_len = max(packet_length, len(data))
        epb.options["opt_comment"] = comment
        self._writer.write_block(epb)
        self.packets += 1

    @property
    def size(self) -> int:
        return self._stream.tell()

    def close(self) -> None:
        """Flushed and fsync'd: sealing hashes what is on disk."""
        import os
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
