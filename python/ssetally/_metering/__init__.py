"""The per-stream metering pipeline: bytes in, a final usage report out, with no I/O but the
fallbacks' retrieval (``_run``). Every front-end (client, transport, proxy) is built on it.

Layers, lowest first: ``_request`` (the request body, usage injection), ``_redact``
(credentials), ``_decode`` (content decoding), ``_estimate``/``_bpe`` (tiktoken counts),
``_retrieval`` (``GET /responses/{id}``), ``_answer`` (non-streamed JSON answers),
``_fallback`` (the plan and its steps), ``_meter`` (``StreamMeter``), ``_run`` (the I/O twins).
"""

from ._answer import JsonCapture, report_of_json_body
from ._fallback import NOTHING, Plan, skipped
from ._meter import StreamMeter
from ._redact import (
    SECRET_FIELDS,
    redact,
    redact_report,
    request_secrets,
    secrets_of,
    wire_secrets,
)
from ._request import (
    Injection,
    encode_body,
    inject_usage,
    is_llm_path,
    json_body,
    parse_json_object,
    requested_model,
    usage_request,
)
from ._retrieval import RetrievalPolicy, RetrievalResult, aretrieve, retrieval_request, retrieve
from ._run import arun_fallbacks, run_fallbacks

__all__ = [
    "NOTHING",
    "SECRET_FIELDS",
    "Injection",
    "JsonCapture",
    "Plan",
    "RetrievalPolicy",
    "RetrievalResult",
    "StreamMeter",
    "aretrieve",
    "arun_fallbacks",
    "encode_body",
    "inject_usage",
    "is_llm_path",
    "json_body",
    "parse_json_object",
    "redact",
    "redact_report",
    "report_of_json_body",
    "request_secrets",
    "requested_model",
    "retrieval_request",
    "retrieve",
    "run_fallbacks",
    "secrets_of",
    "skipped",
    "usage_request",
    "wire_secrets",
]
