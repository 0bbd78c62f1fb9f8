"""HTTP front of the witness: ``POST <prefix>/add-checkpoint`` (C2SP tlog-witness).

The standard library's ThreadingHTTPServer, not the evidence API's ASGI stack: the
witness is one POST route whose every guarantee lives in witness.service and the
SQLite compare-and-swap, and it is meant to run on another host, by another party,
with as little code and as few dependencies to trust as possible. HTTP/1.1
keep-alive, as the spec asks.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from producers.errors import ConfigError
from relay.witness.service import MAX_BODY, Answer, Witness

IDLE_TIMEOUT_S = 30.0  # a connection silent this long is closed: it holds a thread


def make_server(
    witness: Witness,
    host: str,
    port: int,
    prefix: str = "",
    idle_timeout: float = IDLE_TIMEOUT_S,
) -> ThreadingHTTPServer:
    if not 0 <= port <= 65535:  # bind() would raise OverflowError, not OSError
        raise ConfigError(f"--port {port} is not a port number (0-65535)")
    route = prefix.rstrip("/") + "/add-checkpoint"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout  # each connection has a thread: an idle one must not keep it

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without this, Nagle's algorithm and
            # the client's delayed ACK add ~40 ms to every answer on a kept-alive connection
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _answer(self, answer: Answer) -> None:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def do_POST(self) -> None:
            if self.path != route:
                self._answer(Answer(404, b"not found\n"))
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True
                self._answer(Answer(400 if length < 0 else 413, b"bad Content-Length\n"))
                return
            self._answer(witness.add_checkpoint(self.rfile.read(length)))

        def do_GET(self) -> None:
            self._answer(Answer(405 if self.path == route else 404, b"POST only\n"))

        def log_message(self, format: str, *args: object) -> None:
            pass  # witness.service logs each decision as one structured line

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="witness-http", daemon=True)
    thread.start()
    return thread
