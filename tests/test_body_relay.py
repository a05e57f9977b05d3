"""``BodyRelay``, the proxy's per-chunk relay: metered, framed as one HTTP/1.1 chunk and
written in one native call. Checked against a recording transport: the framing at every
length, what the metering feed returns (None, bytes, nothing), a feed that raises (metering
stops, the chunk passes; a KeyboardInterrupt goes on up), a closing or failing transport,
the high-water signal and the byte counts."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from ssetally import UsageTap
from ssetally._core import BodyRelay, UsageChunkStripper


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False
        self.fail: BaseException | None = None
        self.write_paused = False  # the flow object too

    def write(self, data: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


def relay(t: Transport, *meter: Any) -> BodyRelay:
    return BodyRelay(t.write, t.is_closing, t, *meter)


def dechunk(frames: list[bytes]) -> bytes:
    out = b""
    for frame in frames:
        size, _, rest = frame.partition(b"\r\n")
        assert rest.endswith(b"\r\n") and int(size, 16) == len(rest) - 2
        out += rest[:-2]
    return out


@pytest.mark.parametrize("size", [1, 9, 15, 16, 255, 256, 4095, 65536, 1_000_001])
def test_each_chunk_is_one_framed_write(size: int) -> None:
    t = Transport()
    r = relay(t)
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert r(body) is False
    assert t.written == [b"%x\r\n%b\r\n" % (size, body)]
    assert r.upstream_bytes == r.client_bytes == size and not r.metering


def test_what_the_feed_returns_passes_on() -> None:
    t = Transport()
    fed: list[bytes] = []

    def feed(data: bytes) -> bytes | None:
        fed.append(data)
        return {b"a": None, b"bb": b"B", b"ccc": b""}[data]

    r = relay(t, feed, lambda exc: None)
    for chunk in (b"a", b"bb", b"ccc"):
        r(chunk)
    assert fed == [b"a", b"bb", b"ccc"]
    assert dechunk(t.written) == b"aB" and len(t.written) == 2  # nothing written for b""
    assert r.upstream_bytes == 6 and r.client_bytes == 2 and r.metering


@pytest.mark.parametrize("fault", [ValueError("bad"), MemoryError(), TypeError("x")])
def test_a_failing_feed_stops_metering_and_the_chunks_pass(fault: Exception) -> None:
    t = Transport()
    calls: list[bytes] = []
    told: list[BaseException] = []

    def feed(data: bytes) -> bytes | None:
        calls.append(data)
        raise fault

    r = relay(t, feed, told.append)
    r(b"one")
    r(b"two")
    assert calls == [b"one"] and told == [fault] and not r.metering
    assert dechunk(t.written) == b"onetwo"


def test_a_feed_returning_another_type_is_a_fault() -> None:
    t = Transport()
    told: list[BaseException] = []
    r = relay(t, lambda data: "text", told.append)
    r(b"abc")
    assert isinstance(told[0], TypeError) and dechunk(t.written) == b"abc"


def test_a_keyboard_interrupt_in_the_feed_goes_on_up() -> None:
    def feed(data: bytes) -> bytes | None:
        raise KeyboardInterrupt

    r = relay(Transport(), feed, lambda exc: None)
    with pytest.raises(KeyboardInterrupt):
        r(b"abc")


def test_a_closing_or_failing_transport_is_not_written() -> None:
    t = Transport()
    r = relay(t)
    t.closing = True
    t.write_paused = True
    assert r(b"abc") is True  # still says it is congested
    t.closing = False
    t.fail = ConnectionResetError()
    assert r(b"def") is False
    assert t.written == [] and r.upstream_bytes == 6


def test_the_high_water_signal_is_the_flows() -> None:
    t = Transport()
    r = relay(t)
    assert r(b"a") is False
    t.write_paused = True
    assert r(b"b") is True
    assert dechunk(t.written) == b"ab"


def test_with_a_stripper_feeding_a_tap() -> None:
    t = Transport()
    tap, stripper = UsageTap(), UsageChunkStripper()
    stream = (
        b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,'
        b'"total_tokens":4}}\n\ndata: [DONE]\n\n'
    )
    r = relay(t, lambda data: stripper.feed(data, tap), lambda exc: None)
    for i in range(0, len(stream), 7):
        r(stream[i : i + 7])
    assert (
        dechunk(t.written) == b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    )
    usage = tap.finish().usage
    assert usage is not None and usage.total_tokens == 4


STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    b'"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\ndata: [DONE]\n\n'
)


@pytest.mark.parametrize("clock", [False, True])
def test_a_taps_own_feed_is_called_natively_with_the_same_result(clock: bool) -> None:
    """``native=tap`` feeds the tap without a Python call per chunk: the tap reads what it
    would have read through the call, and the chunks pass on as they came."""
    native, called = UsageTap(clock=clock), UsageTap(clock=clock)
    t, u = Transport(), Transport()
    r = relay(t, native.feed, lambda exc: None, native)
    s = relay(u, lambda data: called.feed(data), lambda exc: None)
    for i in range(0, len(STREAM), 5):
        assert r(STREAM[i : i + 5]) is False
        s(STREAM[i : i + 5])
    assert t.written == u.written and dechunk(t.written) == STREAM
    assert native.bytes_fed == called.bytes_fed == len(STREAM)
    assert native.delta_chunks == called.delta_chunks == 1
    assert native.finish() == called.finish()
    assert (native.first_output_at is not None) is clock and r.metering


def test_a_feed_a_subclass_overrides_is_called() -> None:
    seen: list[bytes] = []

    class Counting(UsageTap):
        def feed(self, data: bytes) -> None:  # type: ignore[override]
            seen.append(data)
            super().feed(data)

    tap = Counting()
    t = Transport()
    r = relay(t, tap.feed, lambda exc: None)
    r(STREAM)
    assert seen == [STREAM] and dechunk(t.written) == STREAM
    usage = tap.finish().usage
    assert usage is not None and usage.total_tokens == 4


def test_a_stripper_and_its_tap_are_called_natively_with_the_same_result() -> None:
    """``native=(stripper, tap)`` does what ``feed=lambda data: stripper.feed(data, tap)``
    does, without the Python call: the same bytes pass, the tap reads the same."""
    injected = STREAM.replace(b'"finish_reason":null}]}', b'"finish_reason":null}],"usage":null}')
    out: dict[str, tuple[bytes, Any]] = {}
    for how in ("native", "called"):
        t = Transport()
        tap, stripper = UsageTap(), UsageChunkStripper()
        feed = partial(stripper.feed, tap=tap)
        r = relay(t, feed, lambda exc: None, (stripper, tap) if how == "native" else None)
        for i in range(0, len(injected), 9):
            r(injected[i : i + 9])
        out[how] = (dechunk(t.written) + stripper.finish(), tap.finish())
        assert stripper.stripped == 1 and r.metering
    assert out["native"] == out["called"]
    assert b'"usage"' not in out["native"][0]
    usage = out["native"][1].usage
    assert usage is not None and usage.total_tokens == 4


def test_native_must_be_a_tap_or_a_stripper_and_a_tap() -> None:
    t = Transport()
    with pytest.raises(TypeError):
        relay(t, lambda data: None, lambda exc: None, (UsageTap(), UsageChunkStripper()))
    # Without a feed there is nothing to meter: strip is not used.
    r = BodyRelay(t.write, t.is_closing, t, None, None, (UsageChunkStripper(), UsageTap()))
    assert r(STREAM) is False and dechunk(t.written) == STREAM and not r.metering
