"""``/v1/package``: the whole signed package (JSONL, signature, signed manifest, summary,
public key) as one tar.gz, built by the same export_window that `flagtrail export` runs,
signed with the server's key (AUDIT_SIGNING_KEY_PATH)."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from flagtrail.api.auth import require
from flagtrail.api.context import ApiContext, context_of
from flagtrail.api.params import Window, single_values, window
from flagtrail.api.problems import Problem, problem_responses
from flagtrail.api.receipts import chain_receipt
from flagtrail.api.streaming import stream_pull
from flagtrail.api.tokens import TokenInfo

router = APIRouter()
EXPORT_READ = Depends(require("export:read"))
ROUTE = "/v1/package"
TAR_GZ = "application/gzip"
READ_CHUNK = 256 * 1024


class PackagePull:
    """Build the package in a private temporary folder, archive it, stream it, delete it."""

    media_type = TAR_GZ
    headers: dict[str, str]  # names the archive: set once it is built

    def __init__(self, ctx: ApiContext, token: TokenInfo, win: Window) -> None:
        from flagtrail.service import export
        from relay.signing import load_private_key

        self.ctx, self.token, self.win = ctx, token, win
        s = ctx.config.settings
        try:
            load_private_key(s.signing_key)
        except Exception as exc:  # the server's own set-up: 503, never the caller's fault
            raise Problem(
                503, "no-signing-key", "this server has no usable signing key for packages"
            ) from exc
        self.folder = Path(
            tempfile.mkdtemp(prefix="flagtrail-package-", dir=ctx.config.package_tmp)
        )
        try:
            paths, self.manifest = export(
                s, win.start, win.end, self.folder / "package", win.controls
            )
            self.name = paths.jsonl.name.removesuffix(".jsonl") + ".tar.gz"
            self.headers = {"Content-Disposition": f'attachment; filename="{self.name}"'}
            self.archive = self.folder / self.name
            with tarfile.open(self.archive, "w:gz", compresslevel=6) as tar:
                for member in sorted((self.folder / "package").iterdir()):
                    tar.add(member, arcname=member.name, recursive=False)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def chunks(self) -> Iterator[bytes]:
        with self.archive.open("rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk

    def start(self) -> None:
        """Chained before the first chunk of an archive longer than one chunk."""
        self._chain("started")

    def end(self, complete: bool, client_left: bool) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._chain("complete" if complete else "client_left" if client_left else "aborted")

    def _chain(self, outcome: str) -> None:
        m = self.manifest
        chain_receipt(
            self.ctx,
            self.token.name,
            ROUTE,
            {
                **self.win.as_meta(),
                "record_count": m["record_count"],
                "head": {k: m["head"][k] for k in ("sequence", "hash")} if m["head"] else None,
                "chain_head": {
                    k: v
                    for k, v in (m["chain_head_at_export"] or {}).items()
                    if k in ("sequence", "hash")
                }
                or None,
                "sha256": m["sha256"],
                "outcome": outcome,
            },
        )


@router.get(
    ROUTE,
    tags=["evidence"],
    summary="the window's whole signed package as one tar.gz",
    responses={
        200: {
            "description": "tar.gz: JSONL, .sig, manifest, manifest .sig, summary, public key",
            "content": {TAR_GZ: {"schema": {"type": "string", "format": "binary"}}},
        },
        **problem_responses(400, 401, 403, 429, 503),
    },
)
async def package(
    request: Request,
    start: str | None = Query(None, description="first day, YYYY-MM-DD (UTC)"),
    end: str | None = Query(None, description="last day, YYYY-MM-DD (included)"),
    controls: str | None = Query(None, description="controls the summary reports"),
    token: TokenInfo = EXPORT_READ,
) -> Any:
    ctx = context_of(request)
    win = window(
        single_values(request.query_params.multi_items(), {"start", "end", "controls"}),
        ctx.config.max_window_days,
    )
    return await stream_pull(ctx.stream_slot(), PackagePull, ctx, token, win)
