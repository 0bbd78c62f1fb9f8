"""Liveness: the process answers (no token needed, nothing about the evidence told)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()


@router.get("/healthz", tags=["operations"], summary="the server is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
