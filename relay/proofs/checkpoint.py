"""C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint): the note text of a signed tree head.

Three lines, then optional extension lines, each ending in a newline::

    <origin>            the log's identity, one per chain here: <key name>/<chain id>
    <tree size>         ASCII decimal, no sign, no leading zero
    <root hash>         standard base64 of the 32-byte RFC 6962 root

Extension lines are signed with the rest; we write none and report any we read.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from producers.errors import EvidenceError
from relay.proofs.merkle import HASH_SIZE
from relay.proofs.note import check_text

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return ("\n".join([*lines, *self.extensions]) + "\n").encode()

    def __post_init__(self) -> None:
        if not self.origin or any(c < " " for c in self.origin):
            raise EvidenceError("a checkpoint's origin must be one non-empty line")
        if not 0 <= self.size < 1 << 64 or len(self.root_hash) != HASH_SIZE:
            raise EvidenceError("a checkpoint needs a size below 2**64 and a 32-byte root hash")
        if any(not line or any(c < " " for c in line) for line in self.extensions):
            raise EvidenceError("a checkpoint's extension lines must be non-empty lines")


def origin_for(key_name: str, chain_id: str) -> str:
    """The origin line of a chain's checkpoints: the note key's name, then the chain."""
    return f"{key_name}/{chain_id}"


def parse_checkpoint(text: bytes) -> Checkpoint:
    """Parse a checkpoint's note text (the part a signature covers)."""
    lines = check_text(text).split("\n")[:-1]
    if len(lines) < 3:
        raise EvidenceError("a checkpoint has at least three lines: origin, size, root hash")
    origin, size, root, *extensions = lines
    if not _SIZE.fullmatch(size):
        raise EvidenceError(f"the checkpoint's tree size {size[:30]!r} is not a plain decimal")
    try:
        root_hash = base64.b64decode(root.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise EvidenceError("the checkpoint's root hash is not base64") from exc
    checkpoint = Checkpoint(origin, int(size), root_hash, tuple(extensions))
    if checkpoint.text() != text:  # base64 has one spelling of each value
        raise EvidenceError("the checkpoint is not in its one canonical form")
    return checkpoint


# flagtrail's one extension line: when the log signed the checkpoint. It makes a
# heartbeat (the same tree, signed again later) a different, dated statement.
TIME_EXTENSION = "flagtrail-time "


def signed_time(checkpoint: Checkpoint) -> str | None:
    """The time a checkpoint's flagtrail-time extension line states, if any."""
    for line in checkpoint.extensions:
        if line.startswith(TIME_EXTENSION):
            return line.removeprefix(TIME_EXTENSION)
    return None
