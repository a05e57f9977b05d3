"""A local SSE server for the end-to-end benchmark: 127.0.0.1 only, bounded in time.

``GET /stream/<i>`` answers stream ``i`` of a deterministic corpus (same generator and seed
as the client, so the client knows the truth) as ``text/event-stream`` with chunked
transfer encoding, one chunk per 1-4 KiB read of the corpus, as fast as the socket takes it.
Prints ``PORT <n>`` once listening; exits by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from corpus import many_streams

HOST = "127.0.0.1"


def _handler(streams: list[list[bytes]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client reuses one connection
        disable_nagle_algorithm = True  # each read is sent at once, as an SSE server does

        def do_GET(self) -> None:
            prefix, _, index = self.path.rpartition("/")
            if prefix != "/stream" or not index.isdigit():
                self.send_error(404)
                return
            reads = streams[int(index) % len(streams)]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            write = self.wfile.write
            for read in reads:
                write(b"%x\r\n%s\r\n" % (len(read), read))
            write(b"0\r\n\r\n")
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", default="chat")
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--chunking", default="1-4k")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()

    workload = many_streams(args.kind, args.size, args.chunking)
    streams = [[read for part in stream for read in part.chunks] for stream in workload.pool]
    server = ThreadingHTTPServer((HOST, 0), _handler(streams))
    server.daemon_threads = True
    timer = threading.Timer(args.max_seconds, lambda: os._exit(0))
    timer.daemon = True
    timer.start()
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
