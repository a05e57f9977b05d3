"""Instructions per relayed chunk of ``ssetally proxy``, counted by valgrind's callgrind: a
figure that does not move with the load of a shared machine, unlike CPU seconds.

    python benches/gateway_callgrind.py                   # the default proxy
    python benches/gateway_callgrind.py --flags=--no-metering

The proxy runs under ``valgrind --tool=callgrind`` against the benchmark's mock upstream
(chunks far enough apart that each reaches the proxy on its own, even slowed down by
valgrind); after a warm-up the counters are zeroed, ``--connections`` connections run
``--streams`` streams each, and the counters are dumped: instructions of the whole proxy
process (every thread) over that window, divided by the chunks relayed. Loopback only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_paths
from gateway_client import Level, run_level
from gateway_paths import HOST, _wait_port
from gateway_upstream import run
from soak_proxy import free_port, proxy_env, stop_proxy

HERE = Path(__file__).resolve().parent


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def _total(out_dir: Path) -> int:
    """Instructions in the dumps of the measured window (``callgrind.out.*.N`` with N >= 1)."""
    total = 0
    for dump in sorted(out_dir.glob("callgrind.out.*")):
        if dump.name.count(".") < 3:  # the final dump at exit: not the window
            continue
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flags", default="", help="extra flags of ssetally proxy")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--streams", type=int, default=2, help="streams per connection")
    parser.add_argument("--events", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--keep", type=Path, help="copy the dumps into this directory")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ssetally-callgrind-") as tmp_name:
        tmp = Path(tmp_name)
        upstream = subprocess.Popen(
            [sys.executable, str(HERE / "gateway_upstream.py"), "--events", str(args.events),
             "--delay-ms", str(args.delay_ms), "--max-seconds", "3600"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert upstream.stdout is not None
        up_port = int(upstream.stdout.readline().split()[1])
        port = free_port()
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out.%p",
            sys.executable, "-m", "ssetally", "proxy", "--upstream", f"http://{HOST}:{up_port}",
            "--port", str(port), "--sink", f"jsonl:{tmp}/usage.jsonl", "--workers", "1",
            "--log-level", "warning", *args.flags.split(),
        ]  # fmt: skip
        log = open(tmp / "proxy.log", "wb")  # noqa: SIM115 - closed with the process
        proxy = subprocess.Popen(command, env=proxy_env(tmp), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        gateway_paths.START_TIMEOUT = 600.0  # valgrind starts Python slowly
        try:
            _wait_port(proxy, port, "the proxy under valgrind")
            run(run_level(Level("warm", 4), port, 1, events=8, stream_timeout=300))
            _control("-z", str(proxy.pid))
            level = Level("measured", args.connections)
            t0 = time.monotonic()
            # As in gateway.py: with --inject-usage the client does not ask for usage itself,
            # so the proxy injects the option and strips what it adds.
            usage = "--inject-usage" not in args.flags.split()
            run(
                run_level(
                    level, port, args.streams, usage=usage, stream_timeout=600, level_timeout=1800
                )
            )
            wall = time.monotonic() - t0
            _control("-d", str(proxy.pid))
            time.sleep(1)
            instructions = _total(tmp)
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for dump in tmp.glob("callgrind.out.*"):
                    shutil.copy(dump, args.keep / dump.name)
        finally:
            stop_proxy(proxy, 120)
            upstream.terminate()
            upstream.wait(10)
        failed = level.failed + sum(level.errors.values())
        chunks = level.chunks
        print(
            f"flags {args.flags or '(none)'}: {chunks} chunks in {level.streams} streams "
            f"({failed} failures, {wall:.1f} s), {instructions:,} instructions, "
            f"{instructions / max(chunks, 1):,.0f} per chunk"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
