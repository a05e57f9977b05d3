"""``UsageTap(clock=True)`` reads ``time.monotonic``'s clock natively: each reading lies
between Python's own readings taken just before and just after the ``feed`` that made it, on
the first stream of a process and on later ones, after a pause too."""

from __future__ import annotations

import time

from ssetally import UsageTap

EVENT = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
    b'"delta":{"content":"x"},"finish_reason":null}]}\n\n'
)


def test_readings_fall_between_pythons_own() -> None:
    for round_ in range(3):
        for _ in range(2000):
            tap = UsageTap(clock=True)
            before = time.monotonic()
            tap.feed(EVENT)
            after = time.monotonic()
            first, output = tap.first_read_at, tap.first_output_at
            assert first is not None and output is not None
            assert before <= first <= output <= after
            tap.feed(b": ping\n\n")  # no output: the last output reading stays
            assert tap.last_output_at == output
        time.sleep(0.2 * round_)


def test_no_clock_no_readings() -> None:
    tap = UsageTap()
    tap.feed(EVENT)
    assert tap.first_read_at is None and tap.first_output_at is None
