"""``python -m ssetally proxy`` in a child process on a free port, for the tests of the
command itself (its flags, its exit on SIGINT, what it flushes then)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from loopback_http import free_port


@contextmanager
def proxy_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 20.0
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The proxy run with ``args`` and a ``--port`` of its own, and that port, once it
    accepts connections (within ``timeout`` seconds). At the end of the block it gets SIGINT
    and ``timeout`` seconds to exit (then it is killed); the caller checks ``returncode``."""
    port = free_port()
    command = [sys.executable, "-m", "ssetally", "proxy", "--port", str(port), *args]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ if env is None else env),
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.05)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
