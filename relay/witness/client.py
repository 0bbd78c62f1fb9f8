"""The relay's side of C2SP tlog-witness: send each new checkpoint to the configured
witnesses with a consistency proof from the size each last cosigned, keep their
cosignatures beside the checkpoint, and raise the alarm when one refuses.

``FLAGTRAIL_WITNESSES``: entries separated by commas or newlines, each
``VKEY URL`` (the witness's cosignature verifier key, whose name names it, and its
submission prefix; ``/add-checkpoint`` is appended), or a path to a file of such lines.

A refusal (403, 404, 422, a 409 that a retry from the witness's own size does not
settle, or a witness whose tree is larger than ours) means the witness has seen a
history this log no longer extends: the log was rewritten, or forked. It is counted
(``flagtrail_witness_refusals_total{witness}``) and logged as ``witness.refused`` at
error level. An unreachable witness is counted apart (``…_errors_total``): it proves
nothing either way. Sending runs on a thread of its own, newest checkpoint first, so
a slow witness never slows the relay.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import structlog

from producers.errors import ConfigError, EvidenceError
from relay.latest import LatestWorker
from relay.proofs.checkpoint import Checkpoint, parse_checkpoint
from relay.proofs.merkle import NodeReader, consistency_proof
from relay.proofs.note import split_note
from relay.witness.cosignature import CosignatureVerifier, parse_witness_vkey, verified_cosigners
from relay.witness.cosignatures import CosignatureStore

if TYPE_CHECKING:
    from relay.logs.base import AuditLog
    from relay.tree import TreeStore, TreeWriter

log = structlog.get_logger("flagtrail.witness")

WITNESSES_ENV = "FLAGTRAIL_WITNESSES"
TIMEOUT_S = 10.0
_SIZE_ANSWER = re.compile(rb"([0-9]{1,20})\n")  # the witness's size in a 409 (text/x.tlog.size)


@dataclass(frozen=True)
class WitnessEndpoint:
    verifier: CosignatureVerifier
    url: str  # the submission prefix

    @property
    def name(self) -> str:
        return self.verifier.name


def parse_witnesses(text: str | None) -> list[WitnessEndpoint]:
    """FLAGTRAIL_WITNESSES (or a file it names) → endpoints; ConfigError if malformed."""
    if not text or not text.strip():
        return []
    if "\n" not in text and " " not in text.strip() and Path(text.strip()).is_file():
        try:
            text = Path(text.strip()).read_text()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"{WITNESSES_ENV}: cannot read {text.strip()} as text") from None
    endpoints = []
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split()
        if len(parts) != 2 or not parts[1].startswith(("http://", "https://")):
            raise ConfigError(
                f"{WITNESSES_ENV}: each witness is 'VKEY URL' (its cosignature key and "
                f"http(s) submission prefix), not {entry[:60]!r}"
            )
        endpoints.append(WitnessEndpoint(parse_witness_vkey(parts[0]), parts[1].rstrip("/")))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise ConfigError(f"{WITNESSES_ENV}: a witness is named twice")
    return endpoints


def witnesses_from_environment() -> list[WitnessEndpoint]:
    return parse_witnesses(os.environ.get(WITNESSES_ENV))


class WitnessObserver(Protocol):
    def witness_cosigned(self, witness: str) -> None: ...
    def witness_refused(self, witness: str) -> None: ...
    def witness_unreachable(self, witness: str) -> None: ...


class _Silent:
    def witness_cosigned(self, witness: str) -> None: ...
    def witness_refused(self, witness: str) -> None: ...
    def witness_unreachable(self, witness: str) -> None: ...


@dataclass(frozen=True)
class Outcome:
    witness: str
    status: str  # cosigned | refused | unreachable
    detail: str = ""


def _post(url: str, body: bytes) -> tuple[int, str, bytes]:
    parts = urlsplit(url + "/add-checkpoint")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
    try:
        conn.request(
            "POST", parts.path, body=body, headers={"Content-Type": "text/plain; charset=utf-8"}
        )
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type") or "", answer.read(64 * 1024)
    finally:
        conn.close()


def request_body(old: int, proof: Sequence[bytes], note: bytes) -> bytes:
    lines = [f"old {old}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n"]
    return "".join(lines).encode() + note


class WitnessClient:
    """Sends checkpoints of one chain to its witnesses (see the module's docstring)."""

    def __init__(
        self,
        witnesses: Sequence[WitnessEndpoint],
        reader: Callable[[], NodeReader],
        cosignatures: CosignatureStore,
        observer: WitnessObserver | None = None,
    ) -> None:
        self.witnesses = list(witnesses)
        self.reader = reader  # a fresh tree reader per checkpoint: the log's tail moves
        self.cosignatures = cosignatures
        self.observer: WitnessObserver = observer or _Silent()
        self.sizes: dict[str, int] = {}  # what each witness last cosigned, as far as we know
        self._worker: LatestWorker[bytes] = LatestWorker(self.send, "witness-client")

    # -- synchronous -----------------------------------------------------------------------
    def send(self, note: bytes) -> list[Outcome]:
        """Send one checkpoint to every witness now; what each answered."""
        checkpoint = parse_checkpoint(split_note(note)[0])
        read = self.reader()
        return [self._send_one(w, checkpoint, note, read) for w in self.witnesses]

    def _send_one(
        self, witness: WitnessEndpoint, cp: Checkpoint, note: bytes, read: NodeReader
    ) -> Outcome:
        old = min(self.sizes.get(witness.name, 0), cp.size)
        try:
            for attempt in range(2):
                proof = consistency_proof(read, old, cp.size)
                status, ctype, body = _post(witness.url, request_body(old, proof, note))
                if status == 409 and ctype.startswith("text/x.tlog.size") and attempt == 0:
                    theirs = _size(body)
                    if theirs is not None and theirs != old and theirs <= cp.size:
                        old = theirs  # we did not know what it cosigned last: prove from there
                        continue
                    if theirs is not None and theirs > cp.size:
                        return self._refused(
                            witness,
                            cp,
                            409,
                            f"the witness cosigned {theirs} records, the log "
                            f"now has {cp.size}: the log shrank",
                        )
                break
        except (OSError, http.client.HTTPException) as exc:
            self.observer.witness_unreachable(witness.name)
            log.warning(
                "witness.unreachable", witness=witness.name, url=witness.url, error=str(exc)
            )
            return Outcome(witness.name, "unreachable", str(exc))
        if status != 200:
            return self._refused(witness, cp, status, body.decode(errors="replace").strip())
        try:
            found = verified_cosigners(note + body, [witness.verifier])
        except EvidenceError as exc:
            found, problem = {}, str(exc)
        else:
            problem = "its answer holds no cosignature by its key"
        if witness.name not in found:
            return self._refused(witness, cp, status, problem)
        for line in body.decode().splitlines():
            if line.startswith(f"— {witness.name} "):
                self.cosignatures.add(note, witness.name, line + "\n")
        self.sizes[witness.name] = cp.size
        self.observer.witness_cosigned(witness.name)
        log.info("witness.cosigned", witness=witness.name, origin=cp.origin, size=cp.size)
        return Outcome(witness.name, "cosigned")

    def _refused(self, witness: WitnessEndpoint, cp: Checkpoint, status: int, why: str) -> Outcome:
        self.observer.witness_refused(witness.name)
        log.error(
            "witness.refused",
            witness=witness.name,
            origin=cp.origin,
            size=cp.size,
            status=status,
            reason=why,
            alarm="the witness holds a history this log does not extend: the log may have "
            "been rewritten",
        )
        return Outcome(witness.name, "refused", f"{status}: {why}")

    # -- in the background -----------------------------------------------------------------
    def submit(self, note: bytes) -> None:
        """Queue a checkpoint (a newer one replaces one not yet sent)."""
        if self.witnesses:
            self._worker.submit(note)

    def flush(self, timeout: float = 2 * TIMEOUT_S + 5) -> bool:
        """Wait until every queued checkpoint was sent; False on timeout."""
        return self._worker.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._worker.close(timeout)  # bounded: a stopping relay waits this long at most


def _size(body: bytes) -> int | None:
    # ASCII digits, at most 20 (a u64): str.isdigit() also takes "²", and int() refuses
    # 4,300+ digits; either raised out of send() and kept the other witnesses waiting
    match = _SIZE_ANSWER.fullmatch(body)
    return int(match.group(1)) if match else None


def witness_client_for(
    tree: TreeWriter | None, log_url: str, chain_id: str
) -> WitnessClient | None:
    """The relay's client for FLAGTRAIL_WITNESSES (None when none is configured)."""
    endpoints = witnesses_from_environment()
    if not endpoints:
        return None
    if tree is None or tree.signer is None:
        raise ConfigError(
            f"{WITNESSES_ENV} is set, but the relay signs no checkpoints for witnesses to "
            "cosign: create a note key (flagtrail keygen --type note, FLAGTRAIL_NOTE_KEY_PATH)"
        )
    store = tree.store
    return WitnessClient(
        endpoints, log_reader(store, log_url, chain_id), CosignatureStore(store.engine, chain_id)
    )


def log_reader(store: TreeStore, log_url: str, chain_id: str) -> Callable[[], NodeReader]:
    """Tree readers over a read-only log of the client's own (opened on first use, on
    the client's thread: the relay's writer is not shared across threads)."""
    opened: list[AuditLog] = []

    def reader() -> NodeReader:
        from relay.logs import open_log
        from relay.tree import TreeReader

        if not opened:
            opened.append(open_log(log_url, chain_id, read_only=True))
        return TreeReader(store, opened[0]).node

    return reader
