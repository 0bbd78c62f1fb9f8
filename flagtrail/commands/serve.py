"""`flagtrail serve`: the read-only evidence API over HTTP(S)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from flagtrail.options import at_most, port, positive
from producers.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from flagtrail.options import add_backends, add_signing_key

    p = sub.add_parser(
        "serve",
        help="serve the read-only evidence API (export, package, head)",
        description="Answers GET/POST /v1/export (the window's JSONL, streamed), "
        "GET /v1/package (the signed package as tar.gz), GET /v1/head, /healthz, "
        "/metrics and /openapi.json. Callers need a token from `flagtrail token create`; "
        "every pull is chained as an evidence_exported event.",
    )
    p.add_argument(
        "--host", help="address to listen on [env FLAGTRAIL_API_HOST, default 127.0.0.1]"
    )
    p.add_argument("--port", type=port, help="port [env FLAGTRAIL_API_PORT, default 8080]")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument(
        "--max-window-days",
        type=positive,
        help="longest window a caller may ask for [env FLAGTRAIL_API_MAX_WINDOW_DAYS, default 400]",
    )
    p.add_argument(
        "--rate-limit",
        type=at_most(MOST_PER_MINUTE),
        help="requests a minute per token [env FLAGTRAIL_API_RATE_LIMIT, default 120]",
    )
    p.add_argument(
        "--max-streams",
        type=at_most(MOST_STREAMS),
        help="exports and packages streamed at once, divided between the workers (each "
        "holds at least one); more wait their turn [env FLAGTRAIL_API_MAX_STREAMS, default 8]",
    )
    p.add_argument(
        "--workers",
        type=positive,
        help="processes answering on the one port; one process uses one core, so set it "
        "to the cores you give the API. Rate limits and /metrics are shared by all "
        "[env FLAGTRAIL_API_WORKERS, default 1]",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies in front of the API whose X-Forwarded-For and X-Forwarded-Proto to "
        "believe: comma-separated addresses or networks, or *. Unset, the client's own "
        "address counts (a client could otherwise name a new address for each refused "
        "guess) [env FLAGTRAIL_API_FORWARDED_ALLOW_IPS]",
    )
    add_signing_key(p, "packages from /v1/package")
    add_backends(p)
    p.set_defaults(func=cmd_serve)


# the rate limiter and the stream slots divide these as floats: a bigger number is a
# typo, and would be an OverflowError at start-up or on every export
MOST_PER_MINUTE = 10**9
MOST_STREAMS = 10**6
# after SIGTERM, running pulls get this long to finish; then they are cut and chained as
# unfinished. Without it a client that stops reading keeps the server up until an
# orchestrator's SIGKILL (Kubernetes waits 30 s), and that pull is never chained.
SHUTDOWN_GRACE_S = 10


def _setting(
    name: str, given: int | None, default: int, parse: Callable[[str], int] = positive
) -> int:
    """``given`` (the option, which argparse parsed with ``parse``), else the variable
    ``name`` parsed the same way, else ``default``."""
    if given is not None:
        return given
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def api_config(args: argparse.Namespace):  # -> ApiConfig
    from flagtrail.api.config import DEFAULT_HOST, DEFAULT_PORT, ApiConfig
    from flagtrail.settings import Settings

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    return ApiConfig(
        settings=Settings.from_args(args),
        host=args.host or os.environ.get("FLAGTRAIL_API_HOST") or DEFAULT_HOST,
        port=_setting("FLAGTRAIL_API_PORT", args.port, DEFAULT_PORT, port),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        max_window_days=_setting("FLAGTRAIL_API_MAX_WINDOW_DAYS", args.max_window_days, 400),
        rate_per_minute=_setting(
            "FLAGTRAIL_API_RATE_LIMIT", args.rate_limit, 120, at_most(MOST_PER_MINUTE)
        ),
        max_streams=_setting(
            "FLAGTRAIL_API_MAX_STREAMS", args.max_streams, 8, at_most(MOST_STREAMS)
        ),
        workers=_setting("FLAGTRAIL_API_WORKERS", args.workers, 1),
    )


def _trusted_proxies(given: str | None) -> str | None:
    """The proxies whose forwarded headers count, checked; None: no proxy is trusted."""
    import ipaddress

    text = given or os.environ.get("FLAGTRAIL_API_FORWARDED_ALLOW_IPS") or ""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if "*" in items:
        if len(items) > 1:  # uvicorn trusts everyone only for a lone *; among others it is a name
            raise ConfigError("--forwarded-allow-ips: * trusts every proxy; name it alone")
        return "*"
    # written as uvicorn reads them: a network with host bits set (10.1.2.3/8) is to it
    # a name that no address matches, so the operator's proxy would silently not count
    checked = []
    for item in items:
        try:
            if "/" in item:
                checked.append(str(ipaddress.ip_network(item, strict=False)))
            else:
                checked.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ConfigError(
                f"--forwarded-allow-ips: {item!r} is not an address, a network or *"
            ) from None
    return ",".join(checked) or None


def _check_tls(cert: Path, key: Path) -> None:
    """One sentence before start-up rather than uvicorn's traceback."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use --tls-cert {cert} / --tls-key {key}: {exc}") from None


def _check_ready(config) -> None:  # config: ApiConfig
    """Refuse to start, in one sentence, on what would fail every request later."""
    from flagtrail.service import open_audit_log
    from relay.signing import load_private_key

    if config.tls_cert and config.tls_key:
        _check_tls(config.tls_cert, config.tls_key)
    load_private_key(config.settings.signing_key)  # /v1/package signs with it
    open_audit_log(config.settings).close()  # a mistyped log is an error, not empty evidence


def _listen(host: str, port: int):  # -> socket.socket
    """Bind before uvicorn does, so that a busy port is one sentence, not a log dump."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = api_config(args)
    proxies = _trusted_proxies(args.forwarded_allow_ips)
    if config.workers == 1:
        from flagtrail.api.workers import METRICS_DIR_VARIABLE

        # one process keeps its metrics in memory; a folder named in the environment is
        # another program's (or an earlier run's), and /metrics would add up its files.
        # Before anything imports prometheus_client: it picks its mode on import.
        os.environ.pop(METRICS_DIR_VARIABLE, None)
    _check_ready(config)
    sock = _listen(config.host, config.port)
    options = {
        "proxy_headers": proxies is not None,
        "forwarded_allow_ips": proxies,
        "ssl_certfile": str(config.tls_cert) if config.tls_cert else None,
        "ssl_keyfile": str(config.tls_key) if config.tls_key else None,
        "access_log": False,  # ours (flagtrail.api.app.AccessLog) never logs query strings
        "log_config": None,
        "server_header": False,
        "lifespan": "off",
        "timeout_graceful_shutdown": SHUTDOWN_GRACE_S,
    }
    app = None
    if config.workers == 1:  # built before the banner: a failure to build is not "serving"
        from flagtrail.api.app import create_app

        app = create_app(config)
    print(
        f"serving the evidence API on {'https' if config.tls_cert else 'http'}://"
        f"{config.host}:{config.port} (chain {config.settings.chain_id}, "
        f"{config.workers} worker{'s' if config.workers > 1 else ''})",
        flush=True,
    )
    if app is None:
        from flagtrail.api.workers import run_workers

        run_workers(config, sock, options, args.log_format, args.log_level)
    else:
        from flagtrail.api.workers import ReceiptKeepingServer

        ReceiptKeepingServer(uvicorn.Config(app, **options)).run(sockets=[sock])
    return 0
