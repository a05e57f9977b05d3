"""An OTLP/HTTP receiver on 127.0.0.1 keeping the bodies POSTed to each path (gunzipped),
for the tests that export spans and metrics through the real exporter."""

from __future__ import annotations

import gzip

from loopback_http import QuietHandler, ThreadedServer


class OtlpReceiver(ThreadedServer):
    """``bodies[path]``: the export requests received at ``path``, in order."""

    def __init__(self) -> None:
        bodies: dict[str, list[bytes]] = {}
        self.bodies = bodies

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                bodies.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(Handler)
