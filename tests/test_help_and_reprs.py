"""What ``help(ssetally)`` and the reprs show a user: real types and defaults (no
``ForwardRef``, no pipeline internals), reports summarised rather than dumped, and the
non-Optional accessors of the report's optional parts."""

from __future__ import annotations

import inspect
import pydoc
from importlib import resources

import httpx
import pytest
import ssetally
from ssetally import StreamReport, Usage, UsageTap
from ssetally._replay import ReplayServer

#: Names that belong to the metering pipeline, not to the public API.
INTERNAL = ("StreamMeter", "_Limits", "ForwardRef(")


def sample_report() -> StreamReport:
    data = resources.files("ssetally").joinpath("samples", "chat_stream.sse").read_bytes()
    tap = UsageTap(collect_output=True)
    tap.feed(data)
    return tap.finish().replace(output=tap.output())


def signatures() -> dict[str, str]:
    """The signature ``help(ssetally)`` shows of every public callable and public method."""
    out: dict[str, str] = {}
    for name in ssetally.__all__:
        obj = getattr(ssetally, name)
        members = [(name, obj)]
        if inspect.isclass(obj):
            members += [(f"{name}.{k}", v) for k, v in vars(obj).items() if not k.startswith("_")]
        for label, member in members:
            if not callable(member):
                continue
            try:
                out[label] = str(inspect.signature(member))
            except (TypeError, ValueError):
                continue
    return out


def test_help_shows_no_internal_types() -> None:
    text = pydoc.render_doc(ssetally, renderer=pydoc.plaintext)
    assert "ForwardRef(" not in text
    for label, signature in signatures().items():
        for name in INTERNAL:
            assert name not in signature, (label, signature)


@pytest.mark.parametrize("name", ["Usage", "StreamReport", "Attempt", "Timings"])
def test_report_signatures_show_plain_types(name: str) -> None:
    signature = str(inspect.signature(getattr(ssetally, name)))
    assert "ForwardRef" not in signature and "Ellipsis" not in signature
    if name == "Usage":
        assert "input_tokens: 'int | None' = None" in signature


def test_python_signatures_show_no_ellipsis() -> None:
    for label, signature in signatures().items():
        assert "Ellipsis" not in signature, (label, signature)


def test_usage_stream_shows_no_constructor_internals() -> None:
    assert str(inspect.signature(ssetally.UsageStream)) == "()"
    assert str(inspect.signature(ssetally.AsyncUsageStream)) == "()"


def test_report_repr_says_what_a_user_needs() -> None:
    report = sample_report()
    assert report.usage is not None and report.output is not None
    text = repr(report)
    text_chars = len(report.output["choices"][0]["text"])
    assert len(text) < 1000 < text_chars  # the output is summarised, not dumped
    assert f"{text_chars} characters of text" in text
    assert "status='completed'" in text and "api='chat.completions'" in text
    assert f"output_tokens={report.usage.output_tokens}" in text
    assert "oversized_events" not in text  # left at its default
    assert report.output["choices"][0]["text"][:30] not in text


def test_usage_repr_leaves_out_what_the_provider_did_not_say() -> None:
    usage = Usage(input_tokens=3, output_tokens=5, total_tokens=8, raw={"prompt_tokens": 3})
    assert repr(usage) == "Usage(input_tokens=3, output_tokens=5, total_tokens=8, source='stream')"
    assert usage.raw == {"prompt_tokens": 3}  # still there, as a field


def test_require_usage_and_timings() -> None:
    report = sample_report()
    assert report.require_usage() is report.usage
    with pytest.raises(LookupError, match="no timings"):
        report.require_timings()
    tap = UsageTap()
    tap.feed(b'data: {"id":"c","object":"chat.completion.chunk","choices":[]}\n\n')
    with pytest.raises(LookupError, match="no usage in the stream"):
        tap.finish().require_usage()


def test_require_report_of_a_usage_stream() -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    auth = {"Authorization": "Bearer test"}
    with ReplayServer() as server, httpx.Client(trust_env=False, timeout=30) as client:
        url = server.url + "/chat/completions"
        with ssetally.connect_usage(client, "POST", url, json=body, headers=auth) as stream:
            with pytest.raises(RuntimeError, match="block exits"):
                stream.require_report()
            list(stream)
    report = stream.require_report()
    assert report is stream.report
    assert report.require_usage().output_tokens == server.last.output_tokens
    assert report.require_timings().ttft is not None


@pytest.mark.parametrize(
    "cls",
    [
        ssetally.SSEDecoder,
        ssetally.UsageTap,
        ssetally.LineDecoder,
        ssetally._core.UsageChunkStripper,
        ssetally._core.ContentDecoder,
    ],
)
def test_native_signatures_show_their_real_defaults(cls: type) -> None:
    text = str(inspect.signature(cls))
    assert "..." not in text and "Ellipsis" not in text, text
    assert "16777216" in text or "8388608" in text, text
    assert "Ellipsis" not in pydoc.render_doc(cls)
