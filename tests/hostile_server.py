"""An HTTPS server that answers whatever a test scripts: the evidence API as an attacker
(or a broken proxy) would run it, to test what `flagtrail pull` does when the server lies."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.tls import TestCA

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Hostile:
    url: str
    answer: Answer | None = None
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def send(status: int, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    """Answer with this status, headers and body (Content-Length unless headers set one)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        extra = headers or {}
        for name, value in extra.items():
            handler.send_header(name, value)
        if "Content-Length" not in extra:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def cut_short(body: bytes, keep: int) -> Answer:
    """Announce the whole body, send ``keep`` bytes of it, then drop the connection
    (a server killed mid-stream)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/gzip")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:keep])
        handler.wfile.flush()
        handler.close_connection = True

    return answer


@contextmanager
def hostile_server(ca: TestCA | None, answer: Answer | None = None) -> Iterator[Hostile]:
    """HTTPS (with ``ca``'s server certificate) or plain http on a free loopback port."""
    state = Hostile("", answer)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers.items())))
            assert state.answer is not None
            state.answer(self)

        def do_POST(self) -> None:  # the seed's curl --data-urlencode posts a form
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.do_GET()

        def log_message(self, *args: object) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if ca is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(ca.server_cert, ca.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
