"""Structure-aware mutations: edit JSON records and manifests, not only their bytes.

Byte flips almost never keep a line valid JSON with a matching hash, so most of
verify's and summary's code would stay unreached: C parsers give the fuzzer no
coverage feedback. These mutators change one value or key of a parsed record or
manifest (to any JSON type, deep nesting, huge numbers, lone surrogates), and
may re-seal the chain after the edit so that the hashes hold and the input gets
past the chain check. Used by atheris (custom mutator) and by the Hypothesis
fallback alike; half of the time they leave the bytes to the engine's own mutator.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from typing import Any

from relay.canonical import GENESIS, seal
from tests.fuzz.targets import MANIFEST_SEPARATOR

NAMES = [
    "hash", "prev_hash", "sequence", "timestamp_utc", "recorded_at", "action", "soc2_controls",
    "meta", "chain_id", "event_id", "before", "after", "approver", "record_count", "sha256",
    "anchor", "head", "public_key", "public_key_fingerprint", "window", "start", "end",
    "rotations", "evidence_file", "signature_file", "manifest_version", "previous",
    "gap_statements", "control_counts", "starts_at_genesis", "signature",
]  # fmt: skip
STRINGS = [
    "", "sentinel_rotation", "update", GENESIS, "CC8.1", "\ud800", "\udfff", "\x00", "\x7f",
    "é", "🚀", "2026-01-01T00:00:00.000000Z", "9999-12-31T23:59:59Z", "not a time",
    "audit-public.pem", "../../etc/passwd", "a\x00b", ".", "SHA256:00",
    "flag-audit-soc2_2026-01-01_2026-06-30.jsonl", "x" * 5000,
]  # fmt: skip
NUMBERS = [0, -1, 1, 6, 2**53 + 1, -(2**63), 2**64, 10**30, 0.5, -0.0, 1e-05, 1e308, float("inf")]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice(NUMBERS)
    if kind == 2:
        return rng.choice(STRINGS)
    if kind == 3:
        return rng.choice(NAMES)
    if kind == 4:
        return rng.randint(-(2**70), 2**70)
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return {rng.choice(NAMES): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    if kind == 7:
        value: Any = 0
        for _ in range(rng.choice([33, 100, 900])):  # json.dumps stops near 1000
            value = [value]
        return value
    return {"hash": rng.choice([GENESIS, "0" * 63, "g" * 64]), "sequence": rng.choice(NUMBERS)}


def mutate_document(doc: Any, rng: random.Random) -> Any:
    """One edit at a random place in a parsed JSON document."""
    if not isinstance(doc, dict | list) or rng.random() < 0.05:
        return random_value(rng)
    node, steps = doc, rng.randrange(4)
    for _ in range(steps):  # walk down a little
        children = list(node.values()) if isinstance(node, dict) else node
        containers = [c for c in children if isinstance(c, dict | list) and c]
        if not containers:
            break
        node = rng.choice(containers)
    if isinstance(node, dict):
        op = rng.randrange(3)
        if op == 0 or not node:
            node[rng.choice(NAMES)] = random_value(rng)
        elif op == 1:
            node[rng.choice(list(node))] = random_value(rng)
        else:
            del node[rng.choice(list(node))]
    elif node:
        at = rng.randrange(len(node))
        if rng.random() < 0.5:
            node[at] = random_value(rng)
        else:
            del node[at]
    else:
        node.append(random_value(rng))
    return doc


def _dumps(doc: Any, rng: random.Random) -> bytes:
    return json.dumps(doc, indent=rng.choice([None, None, 2])).encode()


def reseal(lines: list[bytes]) -> list[bytes]:
    """Recompute every hash from the first record on: a chain that holds, whatever the
    records say (a sentinel_rotation restarts from GENESIS, as the relay writes it)."""
    out, prev = [], GENESIS
    for line in lines:
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a record")
            record.pop("hash", None)
            record.pop("prev_hash", None)
            link = GENESIS if record.get("action") == "sentinel_rotation" else prev
            prev, framed = seal(record, link)
            out.append(framed.encode())
        except (ValueError, TypeError, RecursionError):
            out.append(line)
    return out


def mutate_lines(data: bytes, rng: random.Random) -> bytes:
    """Edit an export (JSONL, and a manifest after MANIFEST_SEPARATOR if present)."""
    export, sep, manifest = data.partition(MANIFEST_SEPARATOR)
    if sep and rng.random() < 0.3:
        with contextlib.suppress(ValueError, RecursionError):
            manifest = _dumps(mutate_document(json.loads(manifest), rng), rng)
        return export + sep + manifest
    lines = export.split(b"\n")
    trailing = bool(lines) and lines[-1] == b""
    if trailing:
        lines.pop()
    if not lines:
        return data
    at, op = rng.randrange(len(lines)), rng.randrange(7)
    if op <= 2:
        with contextlib.suppress(ValueError, RecursionError):
            lines[at] = json.dumps(mutate_document(json.loads(lines[at]), rng)).encode()
    elif op == 3:
        del lines[at]
    elif op == 4:
        lines.insert(at, lines[rng.randrange(len(lines))])
    elif op == 5:
        rotation = {"action": "sentinel_rotation", "sequence": 1, "soc2_controls": []}
        lines.insert(at, json.dumps(rotation).encode())
    else:
        lines[at] = deepen(lines[at], rng)
    if rng.random() < 0.7:
        lines = reseal(lines)
    export = b"\n".join(lines) + (b"\n" if trailing else b"")
    return export + sep + manifest


def deepen(line: bytes, rng: random.Random) -> bytes:
    """Nesting deeper than json.dumps can write (and than json.loads can read)."""
    depth = rng.choice([1000, 1100, 3000, 100_000])
    if not line.endswith(b"}"):
        return line
    return line[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"


def mutate_line(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.05:
        return deepen(data, rng)
    try:
        doc = mutate_document(json.loads(data), rng)
        lines = [json.dumps(doc).encode()]
        return (reseal(lines) if rng.random() < 0.5 else lines)[0]
    except (ValueError, RecursionError):
        return data


def mutate_manifest(data: bytes, rng: random.Random) -> bytes:
    try:
        return _dumps(mutate_document(json.loads(data), rng), rng)
    except (ValueError, RecursionError):
        return data


STRUCTURED: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "line_decoder": mutate_line,
    "verify": mutate_lines,
    "manifest": mutate_manifest,
}


def custom_mutator(
    target: str, byte_mutate: Callable[[bytes, int], bytes]
) -> Callable[[bytes, int, int], bytes] | None:
    """An atheris custom mutator for ``target`` (None: bytes only)."""
    structured = STRUCTURED.get(target)
    if structured is None:
        return None

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return byte_mutate(data, max_size)
        return structured(data, rng)[:max_size]

    return mutate
