"""The HTTP layer: the threading server and the handler reading, writing and cutting answers."""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from ._errors import (
    _BAD_JSON_MESSAGE,
    _NO_KEY_MESSAGE,
    _BadRequest,
    _error,
    _html_page,
    _status_error,
)
from ._faults import _Options
from ._plan import _Plan
from ._records import RecordedRequest, Served
from ._sse import JSON, _dumps, _Replay, _truncate_event

_ERROR_MODEL = re.compile(r"error-(\d{3})")


class _Owner(Protocol):
    """What the HTTP layer needs from the server (``ReplayServer`` provides it)."""

    log: bool
    require_auth: bool
    _stop: threading.Event

    def _record(self, request: RecordedRequest) -> None: ...

    def _options_for(self, headers: Mapping[str, str]) -> _Options: ...

    def _sleep(self, seconds: float) -> bool: ...

    def _next_status(self) -> int | None: ...

    def _next_replay(self) -> _Replay | None: ...

    def _replay_plan(self, replay: _Replay, body: Any, polls: int) -> _Plan: ...

    def _plan(self, endpoint: str, body: JSON, opts: _Options) -> _Plan: ...

    def _retrieve(self, response_id: str) -> JSON | None: ...

    def _new_id(self, prefix: str, length: int) -> str: ...


class _HTTPServer(http.server.ThreadingHTTPServer):
    """The listening server: one daemon thread per connection, open connections tracked."""

    # Daemon handler threads and no join on close: a client holding a keep-alive connection
    # must not keep shutdown() waiting; open connections are closed by close_connections().
    daemon_threads = True
    # The default listen backlog (5) resets connections when many clients connect at once.
    request_queue_size = 256
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: _Owner) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._connections_lock:
            self._connections.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Cut(Exception):
    """The connection is to be dropped without finishing the response."""


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers one connection's requests for the owner ``ReplayServer``."""

    protocol_version = "HTTP/1.1"
    server_version = "ssetally-replay"
    # Idle keep-alive connections give their thread back after this many seconds.
    timeout = 60

    @property
    def owner(self) -> _Owner:
        return cast(_HTTPServer, self.server).owner

    def setup(self) -> None:
        super().setup()
        # No Nagle: each event (or trickled byte) leaves when written, as a real server paces.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.owner.log:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # ---------------------------------------------------------------- request

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        owner = self.owner
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send_json(
                400, _error("Could not read the request body.", "invalid_request_error")
            )
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            body: Any = json.loads(raw) if raw.strip() else None
            bad_json = False
        except ValueError:
            body, bad_json = None, True
        split = urlsplit(self.path)
        request = RecordedRequest(self.command, split.path, split.query, headers, body, raw)
        owner._record(request)

        try:
            opts = owner._options_for(headers)
        except ValueError as exc:
            self._send_json(400, _error(str(exc), "invalid_request_error"))
            return
        if opts.first_byte_delay and owner._sleep(opts.first_byte_delay):
            self.close_connection = True
            return
        if opts.drop_before_headers:
            self._drop(opts.reset)
            return
        status = owner._next_status()
        if status is None:
            status = opts.status
        if status is not None:
            self._send_status(status, opts)
            return
        if owner.require_auth and not _has_credentials(headers):
            self._send_json(401, _error(_NO_KEY_MESSAGE, "invalid_request_error"))
            return

        method, path = self.command, split.path.rstrip("/")
        if method == "POST":
            replay = owner._next_replay()
            if replay is not None:
                self._run(owner._replay_plan(replay, body, opts.poll_in_progress), opts)
                return
            if bad_json or (raw.strip() and not isinstance(body, dict)):
                self._send_json(400, _error(_BAD_JSON_MESSAGE, "invalid_request_error"))
                return
            endpoint = _endpoint(path)
            if endpoint is None:
                self._send_not_found(method, split.path)
                return
            self._post(endpoint, body if isinstance(body, dict) else {}, opts)
            return
        match = re.search(r"/responses/([^/]+)$", path)
        if method == "GET" and match:
            self._get_response(match.group(1))
            return
        self._send_not_found(method, split.path)

    def _post(self, endpoint: str, body: JSON, opts: _Options) -> None:
        owner = self.owner
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send_json(
                400, _error("you must provide a model parameter", "invalid_request_error")
            )
            return
        error_model = _ERROR_MODEL.fullmatch(model)
        if error_model:
            self._send_status(int(error_model.group(1)), opts)
            return
        try:
            plan = owner._plan(endpoint, body, opts)
        except _BadRequest as exc:
            self._send_json(400, _error(exc.message, "invalid_request_error", exc.param))
            return
        self._run(plan, opts)

    def _get_response(self, response_id: str) -> None:
        found = self.owner._retrieve(response_id)
        if found is None:
            message = f"Response with id '{response_id}' not found."
            self._send_json(404, _error(message, "invalid_request_error"))
            return
        self._send_json(200, found)

    # ---------------------------------------------------------------- response

    def _common_headers(self, request_id: str | None = None) -> None:
        self.send_header("x-request-id", request_id or self.owner._new_id("req_", 32))
        self.send_header("openai-version", "2020-10-01")
        self.send_header("openai-processing-ms", "1")

    def _send_json(
        self,
        status: int,
        obj: Any,
        extra: Mapping[str, str] | None = None,
        served: Served | None = None,
    ) -> None:
        payload = _dumps(obj)
        request_id = self.owner._new_id("req_", 32)
        if served is not None:
            served.request_id = request_id
            served.bytes_sent = len(payload)
            served.body_sha256 = hashlib.sha256(payload).hexdigest()
        self._send_body(status, "application/json", payload, extra, request_id)

    def _send_body(
        self,
        status: int,
        content_type: str,
        payload: bytes,
        extra: Mapping[str, str] | None,
        request_id: str | None = None,
        common: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if common:
            self._common_headers(request_id)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _send_not_found(self, method: str, path: str) -> None:
        self._send_json(404, _error(f"Invalid URL ({method} {path})", "invalid_request_error"))

    def _send_status(self, status: int, opts: _Options) -> None:
        extra: dict[str, str] = {}
        if status in (429, 503):
            extra["Retry-After"] = str(math.ceil(opts.retry_after))
            extra["retry-after-ms"] = str(round(opts.retry_after * 1000))
        if opts.html or status < 400:
            page = _html_page(status).encode("utf-8")
            # A front page (load balancer, proxy): none of the API's own headers.
            self._send_body(status, "text/html; charset=utf-8", page, extra, common=False)
            return
        self._send_json(status, _status_error(status), extra)

    def _write(self, data: bytes, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)

    def _drop(self, reset: bool) -> None:
        """End the exchange here: an orderly close, or a TCP reset once what was written has
        left (a reset discards unsent data; the peer keeps what it received)."""
        self.close_connection = True
        if not reset:
            return
        sock = self.connection
        _wait_sent(sock, self.owner._stop)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            return
        # Closed for real when the handler's file objects are (before the server would
        # shut the socket down with a FIN): SO_LINGER 0 makes that close a RST.
        sock.close()

    def _pause(self, seconds: float) -> bool:
        """Wait between writes; True when the server is shutting down meanwhile. A client
        that went away during the pause raises ``OSError`` here: the next write would still
        be accepted by the kernel (and counted as sent) but never delivered."""
        if self.owner._sleep(seconds):
            return True
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            gone = bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            gone = True
        if gone:
            raise ConnectionAbortedError("the client closed the connection during a pause")
        return False

    def _run(self, plan: _Plan, opts: _Options) -> None:
        served = plan.served
        if plan.body is not None:
            served.completed = True
            self._send_json(200, plan.body, served=served)
            return
        events = list(plan.events)
        if opts.error_event is not None and opts.error_event < len(events) and plan.on_error:
            events = events[: opts.error_event] + plan.on_error(opts.error_event)
        if opts.malformed is not None and opts.malformed < len(events):
            events[opts.malformed] = _truncate_event(events[opts.malformed])
        cut = opts.cut_after_events is not None and opts.cut_after_events < len(events)
        if cut:
            events = events[: opts.cut_after_events]
        mid = opts.cut_mid_event
        if mid is not None and mid < len(events):
            # Half of event ``mid`` (at least one byte, never all of it) is the last write.
            events = events[:mid] + [events[mid][: max(1, len(events[mid]) // 2)]]
            cut = True
        served.events_planned = len(events)
        trickle = opts.trickle or opts.trickle_delay > 0

        chunked = self.request_version >= "HTTP/1.1"
        served.request_id = self.owner._new_id("req_", 32)
        self.send_response(200)
        self.send_header("Content-Type", plan.content_type)
        self.send_header("Cache-Control", "no-cache")
        self._common_headers(served.request_id)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        # Counters move before each write and back if it fails: a client that has read an
        # event (or the end of the body) must find it counted when it looks.
        served.cut = cut
        digests = [hashlib.sha256()]
        served.body_sha256 = digests[0].hexdigest()

        def write(data: bytes) -> None:
            # Counted first (a client that has read the bytes finds them counted), undone
            # if the write fails.
            before = served.bytes_sent, served.body_sha256
            digest = digests[-1].copy()
            digest.update(data)
            served.bytes_sent += len(data)
            served.body_sha256 = digest.hexdigest()
            try:
                self._write(data, chunked)
            except OSError:
                served.bytes_sent, served.body_sha256 = before
                raise
            digests[-1] = digest

        try:
            for i, event in enumerate(events):
                if i and opts.delay and self._pause(opts.delay):
                    raise _Cut
                served.events_sent += 1
                try:
                    if trickle:
                        for b in range(len(event)):
                            pause = opts.trickle_delay if i or b else 0.0
                            if pause and self._pause(pause):
                                raise _Cut
                            write(event[b : b + 1])
                    else:
                        write(event)
                except OSError:
                    served.events_sent -= 1
                    raise
            if cut:
                raise _Cut
            served.completed = True
            if chunked:
                try:
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    served.completed = False
                    raise
        except _Cut:
            # No terminating chunk: the client sees the body end mid-message.
            self._drop(opts.reset)
        except OSError:
            served.client_disconnected = True
            self.close_connection = True


def _wait_sent(sock: socket.socket, stop: threading.Event, limit: float = 2.0) -> None:
    """Wait (bounded) until the peer has acknowledged every byte written to ``sock`` (Linux
    ``SIOCOUTQ``; elsewhere a short pause)."""
    deadline = time.monotonic() + limit
    try:
        import fcntl
        import termios

        request = termios.TIOCOUTQ
    except (ImportError, AttributeError):
        stop.wait(0.05)
        return
    buf = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), request, buf)
        except OSError:
            stop.wait(0.05)
            return
        if int.from_bytes(buf, sys.byteorder) == 0 or stop.wait(0.001):
            return


def _has_credentials(headers: Mapping[str, str]) -> bool:
    """A bearer token or the API-key header of another API."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return True
    return any(headers.get(h, "").strip() for h in ("api-key", "x-api-key", "x-goog-api-key"))


def _endpoint(path: str) -> str | None:
    """The generated endpoint a POST path names, or None."""
    if path.endswith("/chat/completions"):
        return "chat.completions"
    if path.endswith("/completions"):
        return "completions"
    if path.endswith("/responses"):
        return "responses"
    return None
