"""The last good revision on disk, with the signature that made it good:
what an agent re-applies at boot before it reaches its controller. The file
is the proof frame (the snapshot's signed begin, or the signed delta that
produced the revision) followed by the revision as unsigned snapshot frames;
reading it checks the frames and the proof again, so a file altered on disk
is refused like a tampered revision on the wire.

A revision made by a delta may instead be appended as that signed delta
(append_delta): a 100-entry change to a 1M-prefix revision then costs one
small fsync'd write, not the whole file again. Reading applies the appended
deltas in order, each checked like one received (its base, its signature,
the digest of the result); a delta torn by a crash while it was appended
is left out (that revision was never acknowledged)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.wire.bundle import DeltaError, PolicyBundle, apply_delta
from agent.wire.frames import FrameDecoder, FrameError, encode_frame, unpack
from agent.wire.messages import Delta, SnapshotBegin, SnapshotChunk, SnapshotEnd, decode_message, message_to_wire
from agent.wire.signing import BundleVerifier, RevisionRefused
from agent.wire.snapshot import EncodedRevision, SnapshotAssembler, SnapshotError


class RevisionFileError(ValueError):
    """A stored revision that cannot be trusted or read; says which file and why."""


def write_revision(path: str | Path, bundle: PolicyBundle, proof: SnapshotBegin | Delta) -> None:
    """Store `bundle` with its proof, atomically (a crash leaves the old file or the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(encode_frame(message_to_wire(proof)))
        for frame in EncodedRevision(bundle).frames:
            out.write(frame)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def append_delta(path: str | Path, delta: Delta) -> int:
    """Append the signed `delta` that made the next revision to the stored
    revision `path` (which must end with the revision it starts from);
    returns the file's size after it."""
    with open(path, "ab") as out:
        out.write(encode_frame(message_to_wire(delta)))
        out.flush()
        os.fsync(out.fileno())
        return out.tell()


def read_revision(path: str | Path, verifier: BundleVerifier) -> PolicyBundle:
    """The stored revision, checked frame by frame and against its proof,
    with any appended deltas applied."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RevisionFileError(f"cannot read the stored revision {path}: {err.strerror}") from None
    decoder = FrameDecoder()
    decoder.feed(data)
    try:
        messages = []
        while (body := decoder.next_body()) is not None:
            messages.append(decode_message(unpack(body)))
        end = next((i for i, m in enumerate(messages) if isinstance(m, SnapshotEnd)), len(messages))
        messages, deltas = messages[:end + 1], messages[end + 1:]
        if decoder.buffered and end == len(messages):      # (after the snapshot: a torn append, left out)
            raise FrameError("malformed_frame", f"{decoder.buffered} bytes of a truncated frame at the end")
        if not all(isinstance(d, Delta) for d in deltas):
            raise FrameError("malformed_frame", "after the snapshot, only appended deltas")
        if len(messages) < 3 or not isinstance(messages[0], (SnapshotBegin, Delta)) or \
                not isinstance(messages[1], SnapshotBegin) or not isinstance(messages[-1], SnapshotEnd) or \
                not all(isinstance(m, SnapshotChunk) for m in messages[2:-1]):
            raise FrameError("malformed_frame", "not a proof followed by one snapshot")
        assembler = SnapshotAssembler(messages[1])
        for chunk in messages[2:-1]:
            assembler.add(chunk)
        bundle = assembler.finish(messages[-1])
        verifier.check_proof(messages[0], bundle.revision, bundle.digest)
        for delta in deltas:
            bundle = apply_delta(bundle, delta)
            verifier.check_proof(delta, bundle.revision, bundle.digest)
    except DeltaError as err:
        raise RevisionFileError(f"stored revision {path}: an appended delta does not apply ({err.reason}: {err}); "
                                f"the agent will take a snapshot from its controller") from None
    except (FrameError, SnapshotError) as err:
        raise RevisionFileError(f"stored revision {path} is corrupt ({err}); the agent will take a snapshot "
                                f"from its controller") from None
    except RevisionRefused as err:
        raise RevisionFileError(f"stored revision {path} is not trusted ({err.reason.value}: {err})") from None
    return bundle
