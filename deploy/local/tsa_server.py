"""HTTP front of a loopback RFC 3161 TSA: each POSTed TimeStampReq is answered by
`openssl ts -reply` (RFC 3161 §3.4, content types application/timestamp-query and
-reply). One request at a time: openssl ts keeps its serial number in a file."""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

MAX_REQUEST = 64 * 1024


def handler_for(config: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.headers.get("Content-Type") != "application/timestamp-query" or not (
                0 < length <= MAX_REQUEST
            ):
                self.send_error(400, "expects an application/timestamp-query body")
                return
            query = self.rfile.read(length)
            with tempfile.TemporaryDirectory() as tmp:
                request, reply = Path(tmp, "q.tsq"), Path(tmp, "r.tsr")
                request.write_bytes(query)
                done = subprocess.run(
                    [
                        "openssl",
                        "ts",
                        "-reply",
                        "-config",
                        config,
                        "-queryfile",
                        str(request),
                        "-out",
                        str(reply),
                    ],
                    capture_output=True,
                    check=False,
                )
                if done.returncode != 0 or not reply.exists():
                    self.send_error(500, "openssl ts -reply failed")
                    return
                body = reply.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    HTTPServer(("127.0.0.1", args.port), handler_for(args.config)).serve_forever()


if __name__ == "__main__":
    main()
