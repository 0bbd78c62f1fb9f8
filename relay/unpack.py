"""Unpack an evidence package archive that came from a server we do not trust.

The archive (``/v1/package``, a tar.gz) holds one package's files, flat. Whoever
serves it may lie, so nothing in it is taken at its word: only regular files
whose names are the package's own names for the window that was asked for are
written, never a path, a link or a device, and never more bytes than allowed; the
files land in a staging folder first and move into place only once all are read.
Whether the contents are true is `verify`'s job (chain, signatures, registered key).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from producers.errors import ConfigError, EvidenceError
from relay.manifest import PackagePaths
from relay.signing import PUBLIC_KEY_FILE

MAX_MEMBERS = 16  # a package has at most nine files; more is not a package
_CHUNK = 1 << 20
# the suffixes a package's files carry after its stem (relay.manifest.PackagePaths)
_SUFFIXES = (
    ".jsonl",
    ".jsonl.sig",
    ".manifest.json",
    ".manifest.json.sig",
    ".manifest.json.tsr",  # the RFC 3161 token, with a TSA (relay/stamping.py)
    ".summary.txt",
    ".proof.json",  # the Merkle proofs, with a tree (relay/package_proofs.py)
)
_LINK = ".link.jsonl"
_CHAIN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


class ArchiveError(EvidenceError):
    """The package archive is not a well-formed package (exit 1: do not use it)."""


@dataclass(frozen=True)
class Unpacked:
    paths: PackagePaths
    records: int
    files: list[Path]


def _member_name(name: str, stem_pattern: re.Pattern[str]) -> str:
    """The member's file name, or ArchiveError when it is anything but a package file."""
    plain = name.removeprefix("./")
    if "/" in plain or "\\" in plain or plain in ("", ".", "..") or "\x00" in plain:
        raise ArchiveError(f"the package archive holds {name!r}, which is not a plain file name")
    if plain == PUBLIC_KEY_FILE or stem_pattern.fullmatch(plain):
        return plain
    raise ArchiveError(
        f"the package archive holds {name[:120]!r}, which is not a file of the package "
        "for the window asked for"
    )


def _stem_pattern(start: date, end: date) -> re.Pattern[str]:
    window = re.escape(f"-soc2_{start.isoformat()}_{end.isoformat()}")
    suffixes = "|".join(re.escape(s) for s in (*_SUFFIXES, _LINK))
    return re.compile(rf"({_CHAIN}){window}({suffixes})")


def check_not_there(paths: list[Path], force: bool) -> None:
    """Refuse to replace a complete file unless told to (a good package must not be lost
    to a bad download)."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise ConfigError(f"{path} already exists; move it away or pass --force to replace it")


def unpack_package(
    archive: Path,
    out_dir: Path,
    start: date,
    end: date,
    *,
    max_bytes: int,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Unpacked:
    """Check ``archive`` whole, then move its files into ``out_dir``; returns where they are."""
    pattern = _stem_pattern(start, end)
    staging = out_dir / f".{archive.name}.unpack"
    if staging.is_symlink():  # planted: remove the link, never what it points at
        staging.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        names, records = _extract(archive, staging, pattern, max_bytes, progress)
        jsonl = [n for n in names if n.endswith(".jsonl") and not n.endswith(_LINK)]
        stems = {pattern.fullmatch(n).group(1) for n in names if n != PUBLIC_KEY_FILE}  # type: ignore[union-attr]
        if len(jsonl) != 1 or len(stems) != 1:
            raise ArchiveError(
                "the package archive does not hold exactly one evidence file (.jsonl) "
                "of one chain for the window asked for"
            )
        targets = [out_dir / n for n in names]
        # the shipped key may already be there from an earlier pull: the same bytes are fine
        check_not_there(
            [
                t
                for t in targets
                if not (t.name == PUBLIC_KEY_FILE and _same_bytes(t, staging / t.name))
            ],
            force,
        )
        for name in names:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Unpacked(PackagePaths.beside(out_dir / jsonl[0]), records, targets)


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


class _BoundedReads:
    """The archive's decompressed stream, refusing any single read over _CHUNK: tarfile
    reads a GNU long name or a pax header whole, so a small gzip bomb from a hostile
    server would otherwise fill memory before any member is seen (file data is read
    in chunks no larger, see _copy)."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _CHUNK:
            raise ArchiveError(
                "the package archive holds a header larger than any package's: refused "
                "before reading it (a compression bomb, or not a package)"
            )
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _extract(
    archive: Path,
    staging: Path,
    pattern: re.Pattern[str],
    max_bytes: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[str], int]:
    names: list[str] = []
    budget, records = max_bytes, 0
    try:
        with (
            gzip.open(archive, "rb") as stream,
            tarfile.open(fileobj=_BoundedReads(stream), mode="r:") as tar,  # type: ignore[arg-type]
        ):
            for member in tar:
                if member.isdir() and not names and member.name.strip("./") == "":
                    continue  # a leading "./" entry some tar writers add
                name = _member_name(member.name, pattern)
                if not member.isreg():
                    raise ArchiveError(
                        f"the package archive holds {member.name!r} as a link or special "
                        "file; a package holds only regular files"
                    )
                if name in names or len(names) >= MAX_MEMBERS:
                    raise ArchiveError(f"the package archive holds {name!r} twice, or too many")
                if member.size > budget:
                    raise ArchiveError(
                        f"the package archive unpacks to more than {max_bytes:,} bytes "
                        "(raise --max-bytes if this window is really that large)"
                    )
                budget -= member.size
                counting = name.endswith(".jsonl") and not name.endswith(_LINK)
                records += _copy(tar, member, staging / name, progress if counting else None)
                names.append(name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise ConfigError(f"cannot unpack {archive}: {exc.strerror}") from None
        raise ArchiveError(f"the package archive is damaged or truncated: {exc}") from None
    return names, records


def _copy(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    target: Path,
    progress: Callable[[int], None] | None,
) -> int:
    """Write one member (never more than its declared size); returns its line count."""
    source = tar.extractfile(member)
    assert source is not None  # a regular file always has data
    lines, left = 0, member.size
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out, source:
        while left:
            chunk = source.read(min(_CHUNK, left))
            if not chunk:
                raise ArchiveError(f"the package archive ends inside {member.name!r}")
            out.write(chunk)
            left -= len(chunk)
            if progress is not None:
                lines += chunk.count(b"\n")
                progress(lines)
    return lines


def set_aside(files: list[Path], archive: Path, folder: Path) -> Path:
    """Move a package that failed its checks away from the names evidence goes by, kept
    whole for whoever investigates (the shipped key is copied: an earlier pull may own it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in [*files, archive]:
        if path.is_symlink() or not path.exists():
            continue
        if path.name == PUBLIC_KEY_FILE:
            shutil.copyfile(path, folder / path.name)
        else:
            os.replace(path, folder / path.name)
    return folder
