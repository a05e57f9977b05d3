"""The paths of the gateway benchmark (direct, nginx, ``ssetally proxy`` variants, LiteLLM):
starting each on a free 127.0.0.1 port pinned to its CPU, its CPU time from /proc, stopping it.

Every path is a ``GatewayPath``: ``start()`` returns False with a ``note`` when it cannot run here (nginx
not installed, a CLI flag missing, LiteLLM not importable), ``cpu_seconds()`` sums user and
system time over the path's process and all its descendants (nginx's workers, the proxy's
``--workers``), ``stop()`` ends it gracefully (SIGINT for the proxy: its sink is flushed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path as FsPath
from typing import Any

from soak_proxy import free_port, proxy_env, stop_proxy

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
NGINX = "/usr/sbin/nginx"


# --------------------------------------------------------------------------- /proc


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = FsPath(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        tree.setdefault(int(stat[1]), []).append(int(entry.name))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (/proc/<pid>/stat utime,
    stime); exited descendants that were reaped count through cutime/cstime."""
    tree = _children()
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = FsPath(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        todo.extend(tree.get(current, ()))
    return total / ticks


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads, without its children."""
    try:
        fields = FsPath(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(command: list[str], cpus: set[int] | None) -> list[str]:
    """``command`` run under ``taskset`` on ``cpus`` (its children inherit the affinity from
    the first instruction on); unchanged when pinning is off or taskset is missing."""
    taskset = shutil.which("taskset")
    if not cpus or not taskset:
        return command
    return [taskset, "-c", ",".join(str(c) for c in sorted(cpus)), *command]


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin a process (all its threads) to ``cpus``; nothing when pinning is off."""
    if not cpus:
        return
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(task), cpus)
    except OSError:
        pass


def _wait_port(
    proc: subprocess.Popen[Any], port: int, what: str, timeout: float | None = None
) -> None:
    import socket

    deadline = time.monotonic() + (START_TIMEOUT if timeout is None else timeout)
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def proxy_help() -> str:
    """``ssetally proxy --help`` of the installed CLI (to see which flags it has)."""
    result = subprocess.run(
        [sys.executable, "-m", "ssetally", "proxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout


#: Flags that turn metering off in the proxy, if a version has one (first found is used).
METERING_OFF_FLAGS = ("--no-metering", "--no-meter", "--pass-through", "--passthrough")


# --------------------------------------------------------------------------- paths


class GatewayPath:
    """A way from the client to the mock upstream."""

    #: The path writes usage records (they are matched to the streams run through it).
    records = False
    #: The highest concurrency the path is run at (None: every level); higher are skipped.
    max_concurrency: int | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.pid: int | None = None
        self.note = ""

    def start(self, upstream_port: int, cpus: set[int] | None, tmp: FsPath) -> bool:
        self.port = upstream_port
        return True

    def cpu_seconds(self) -> float | None:
        return None if self.pid is None else tree_cpu_seconds(self.pid)

    def stop(self) -> None:
        pass


class Nginx(GatewayPath):
    """nginx with ``proxy_buffering off`` and upstream keep-alive: the no-metering floor."""

    def __init__(self, binary: str = NGINX) -> None:
        super().__init__("nginx")
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, upstream_port: int, cpus: set[int] | None, tmp: FsPath) -> bool:
        binary = self.binary if os.access(self.binary, os.X_OK) else shutil.which("nginx")
        if not binary:
            self.note = "nginx is not installed (apt-get install nginx): path skipped"
            return False
        root = FsPath(tempfile.mkdtemp(prefix="nginx-", dir=tmp))
        os.chmod(root, 0o755)  # the worker may run as nobody
        self.port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = root / "nginx.conf"
        conf.write_text(
            f"""{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream mock {{ server {HOST}:{upstream_port}; keepalive 1024; }}
    server {{
        listen {HOST}:{self.port} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""
        )
        log = open(root / "stdout.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            pinned([binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")], cpus),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_port(self.proc, self.port, "nginx")
        self.pid = self.proc.pid
        pin(self.pid, cpus)
        for child in _children().get(self.pid, ()):
            pin(child, cpus)
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Ssetally(GatewayPath):
    """``python -m ssetally proxy`` with a JSONL sink (or ``sink``) and extra flags."""

    records = True

    def __init__(self, name: str, flags: tuple[str, ...] = (), sink: str | None = None) -> None:
        super().__init__(name)
        #: The proxy's --instance-id (its records carry it).
        self.instance_id = f"bench-{name}-{os.getpid()}-{int(time.time())}"
        self.flags = flags
        self.sink = sink
        self.jsonl: FsPath | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def start(self, upstream_port: int, cpus: set[int] | None, tmp: FsPath) -> bool:
        self.port = free_port()
        root = FsPath(tempfile.mkdtemp(prefix="proxy-", dir=tmp))
        sink = self.sink
        if sink is None:
            self.jsonl = root / "usage.jsonl"
            sink = f"jsonl:{self.jsonl}"
        command = [
            sys.executable, "-m", "ssetally", "proxy", "--upstream", f"http://{HOST}:{upstream_port}",
            "--port", str(self.port), "--sink", sink, "--log-level", "warning",
            "--instance-id", self.instance_id, *self.flags,
        ]  # fmt: skip
        self.log = root / "proxy.log"
        log = open(self.log, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            pinned(command, cpus), env=proxy_env(root), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        _wait_port(self.proc, self.port, f"the proxy ({self.name})")
        self.pid = self.proc.pid
        pin(self.pid, cpus)  # without taskset
        return True

    def stop(self) -> None:
        if self.proc is not None:
            self.exit_code = stop_proxy(self.proc)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except (OSError, AttributeError):
            return ""


def litellm_command() -> list[str] | None:
    """How to start LiteLLM's proxy here: the ``litellm`` command beside this Python (a
    virtual environment's ``bin``) or on PATH, else this Python's ``litellm`` module; None
    when it is not installed."""
    here = FsPath(sys.executable).parent
    found = shutil.which("litellm", path=os.pathsep.join([str(here), os.environ.get("PATH", "")]))
    if found:
        return [found]
    from importlib.util import find_spec

    if find_spec("litellm") is not None:
        return [sys.executable, "-c", "from litellm import run_server; run_server()"]
    return None


class LiteLLM(GatewayPath):
    """LiteLLM's proxy (``litellm --config``), one worker, the mock as an OpenAI-compatible
    model. It re-encodes every chunk, so byte fidelity is not expected of it and it writes no
    records here: only its delays, TTFT and CPU are compared. It is heavy: run up to C=64."""

    max_concurrency = 64
    #: Seconds LiteLLM may take to start (it imports a lot).
    START_TIMEOUT = 180.0

    def __init__(self) -> None:
        super().__init__("litellm")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, upstream_port: int, cpus: set[int] | None, tmp: FsPath) -> bool:
        command = litellm_command()
        if command is None:
            self.note = "LiteLLM is not installed (pip install 'litellm[proxy]'): path skipped"
            return False
        root = FsPath(tempfile.mkdtemp(prefix="litellm-", dir=tmp))
        conf = root / "config.yaml"
        conf.write_text(
            "model_list:\n"
            "  - model_name: bench-model\n"
            "    litellm_params:\n"
            "      model: openai/bench-model\n"
            f"      api_base: http://{HOST}:{upstream_port}/v1\n"
            "      api_key: sk-bench\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            # Loopback only, and the client's keys vary: no master key to check them against.
            "general_settings:\n"
            "  dangerously_permit_weak_or_unset_master_key: true\n"
        )
        self.port = free_port()
        # Offline and quiet: the bundled model cost map, no telemetry, warnings only.
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
        env.pop("DATABASE_URL", None)
        log = open(root / "litellm.log", "wb")  # noqa: SIM115 - closed with the process
        command = [
            *command, "--config", str(conf),
            "--host", HOST, "--port", str(self.port), "--num_workers", "1",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            pinned(command, cpus), stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        _wait_port(self.proc, self.port, "LiteLLM", self.START_TIMEOUT)
        self.pid = self.proc.pid
        pin(self.pid, cpus)
        return True

    def stop(self) -> None:
        if self.proc is not None:
            stop_proxy(self.proc)
