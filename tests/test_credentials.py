"""``Credentials``: a request's key fingerprint and secrets, worked out once per distinct set
of credential fields and query, exactly as ``fingerprint`` and ``wire_secrets`` give them, for
every placement of a key (headers of any case, repeated fields, the query, cookies), and
bounded however many distinct keys arrive."""

from __future__ import annotations

import pytest
from ssetally._gateway._headers import Credentials, fingerprint
from ssetally._metering import wire_secrets

CASES: list[tuple[list[tuple[bytes, bytes]], bytes]] = [
    ([(b"host", b"h")], b""),
    ([(b"authorization", b"Bearer sk-live-0123456789")], b""),
    ([(b"Authorization", b"Bearer sk-live-0123456789"), (b"x-other", b"1")], b"a=1"),
    (
        [(b"x-api-key", b"sk-ant-abcdefghij"), (b"authorization", b"Basic dXNlcjpwYXNzd29yZA==")],
        b"",
    ),
    ([(b"api-key", b"azure-key-12345678"), (b"api-key", b"second-key-12345678")], b""),
    ([(b"cookie", b"session=abcdefghijk; theme=dark")], b""),
    ([(b"host", b"h")], b"key=AIzaSyExampleKey123&alt=sse"),
    ([(b"x-goog-api-key", b"AIzaSyHeaderKey1234")], b"key=AIzaSyQueryKey12345"),
    ([(b"proxy-authorization", b"Bearer proxy-secret-123")], b"token=tok-12345678"),
]


@pytest.mark.parametrize(("headers", "query"), CASES)
def test_the_same_as_working_it_out_each_time(
    headers: list[tuple[bytes, bytes]], query: bytes
) -> None:
    credentials = Credentials("salt")
    expected = (fingerprint(headers, query, "salt"), wire_secrets(headers, query))
    assert credentials(headers, query) == expected
    # Again (from what was kept), and with other non-credential fields around them.
    assert credentials([(b"accept", b"*/*"), *headers, (b"x-n", b"2")], query) == expected


def test_different_credentials_are_told_apart() -> None:
    credentials = Credentials("salt")
    seen = {credentials(h, q) for h, q in CASES}
    assert len(seen) == len({(fingerprint(h, q, "salt"), wire_secrets(h, q)) for h, q in CASES})
    assert Credentials("other")(CASES[1][0], b"") != credentials(CASES[1][0], b"")


def test_at_most_limit_are_kept() -> None:
    credentials = Credentials("salt", limit=8)
    for i in range(100):
        key = b"Bearer sk-key-%08d" % i
        got = credentials([(b"authorization", key)], b"")
        assert got == (
            fingerprint([(b"authorization", key)], b"", "salt"),
            wire_secrets([(b"authorization", key)], b""),
        )
    assert len(credentials._known) == 8
