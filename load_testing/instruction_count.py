"""What telemetry costs in instructions (`make bench-instructions`): the same servers as `make bench`,
each run under valgrind's callgrind, which counts the instructions its worker executes while wrk
loads it. A count moves far less with the host's speed than a timing (two identical servers 0.3%
apart, a count's spread about 0.5%, where timed runs of one server vary by 2x); it leaves out what
a count cannot see (cache misses, the kernel's side of syscalls), so it is a lower bound of the CPU
cost, reported beside `make bench`.

Each server starts with instrumentation off (about 5x slower, not 35x) and gets a warm-up. Then its
worker is counted twice (`callgrind_control --instr=on`, then a dump): idle, for the instructions
that come with time rather than requests (timers, threads waking), and under load until every
deferred line, metric and span of the load's requests has been written. The idle rate times the
second window's length is taken off: otherwise a slower host (fewer requests in the same time)
would look like a costlier request. Under callgrind the code runs about 35 times
slower but the clock does not, so the lines are written by count instead of every 0.5 s: each write
takes as many lines as it would at full speed (FLUSH_LINES), whatever the host's speed, and the
per-write cost is shared as it is in production. Span
batches are sent when full (512 spans), as at full speed, with the timer only for the last one.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TypeVar

from benchmark import OUR_SERVERS, Receiver, Running, Target, start_ours, write_bodies, wrk
from workload import REPORTS, documents, ensure_model, models_home, process_tree, use_project_defaults

# Lines a 0.5 s write takes at full speed: 75 requests (150 a second on the development machine),
# each with its prediction event and access-log line.
FLUSH_LINES = 150
# Seconds: longer than 150 lines take to arrive under callgrind (about 15 s), so that the load's lines
# are written by count; the last ones, and those of the warm-up, by time within SETTLE.
FLUSH_SECONDS = 40
SPAN_BATCH_TIMER_MS = 30_000  # the last partial batch of spans goes out within SETTLE
# The last lines are written within FLUSH_SECONDS, and the spans made with them exported within the
# span batch timer after that: so neither the idle window nor the next server sees them.
SETTLE = FLUSH_SECONDS + SPAN_BATCH_TIMER_MS // 1000 + 5
SERVERS = ("off", "off-again", "no-traces", "full", "tenth")
CONNECTIONS = 16
T = TypeVar("T")


@dataclass
class Count:
    server: str
    requests: int
    instructions: float  # of the load and the deferred work it left, less the idle worker's share
    background_per_second: float  # the idle worker's (timers, threads waking), under callgrind

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def callgrind(home) -> list[str]:
    """valgrind before `bentoml serve`: every process of the server is under callgrind, counting nothing
    until told to."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        "--instr-atstart=no",
        f"--callgrind-out-file={home}/callgrind.out.%p",
    ]


def control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=900)


def worker_pid(server: Running) -> int:
    """The serving process: the largest child of `bentoml serve` (one worker, as shipped)."""
    return max(process_tree(server.pid)[1:], key=lambda p: p.memory_info().rss).pid


def counted(home, pid: int, dump: int, work: Callable[[], T]) -> tuple[int, float, T]:
    """Instructions of the worker while `work()` runs, the seconds it ran, and what it returned."""
    control("--instr=on", str(pid))
    started = time.monotonic()
    result = work()
    seconds = time.monotonic() - started
    control("--instr=off", str(pid))
    control("--dump", str(pid))  # writes the counts since the last dump, then zeroes them
    text = (home / f"callgrind.out.{pid}.{dump}").read_text()
    return int(re.search(r"^totals: (\d+)", text, re.MULTILINE).group(1)), seconds, result


def count(name: str, args: argparse.Namespace, receiver: Receiver, bodies, workdir) -> Count:
    home = workdir / name
    home.mkdir()
    server = start_ours(
        name,
        OUR_SERVERS[name],
        home,
        receiver,
        wrapper=callgrind(home),
        TELEMETRY_FLUSH_SECONDS=str(FLUSH_SECONDS),
        TELEMETRY_FLUSH_LINES=str(FLUSH_LINES),
        OTEL_BSP_SCHEDULE_DELAY=str(SPAN_BATCH_TIMER_MS),
    )
    try:
        target = Target(name, name, "/predict", "single", CONNECTIONS)
        wrk(server, target, bodies, args.warmup)
        time.sleep(SETTLE)  # the warm-up's deferred lines, metrics and spans
        pid = worker_pid(server)
        idle, idle_seconds, _ = counted(home, pid, 1, lambda: time.sleep(args.idle))

        def load() -> int:
            result, _ = wrk(server, target, bodies, args.seconds)
            time.sleep(SETTLE)  # the deferred lines, metrics and spans of the last requests
            return result["requests"]

        instructions, seconds, requests = counted(home, pid, 2, load)
        background = idle / idle_seconds  # timers and threads waking: time's share, not the requests'
        return Count(name, requests, instructions - background * seconds, background)
    finally:
        server.stop()


def markdown(counts: list[Count], args: argparse.Namespace) -> str:
    base = next(c for c in counts if c.server == "off").per_request
    lines = [
        f"Instructions of the worker per request, callgrind, wrk {CONNECTIONS} connections for "
        f"{args.seconds} s per server; lines written {FLUSH_LINES} at a time.\n",
        "| server | requests | M instructions / request | vs off | cost | idle worker, M/s |",
        "|---|---|---|---|---|---|",
    ]
    for c in counts:
        ratio = base / c.per_request
        lines.append(
            f"| {c.server} | {c.requests} | {c.per_request / 1e6:.3f} | {ratio:.4f} | {1 - ratio:.1%} "
            f"| {c.background_per_second / 1e6:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"of {', '.join(OUR_SERVERS)}")
    parser.add_argument("--seconds", type=int, default=90, help="counted load per server")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--idle", type=int, default=30, help="seconds counted without load first")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: `make bench-tools` installs the pinned versions")
    use_project_defaults()
    ensure_model(models_home())
    workdir = REPORTS / "instructions"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    bodies = write_bodies(workdir, documents().texts)["single"]
    names = args.servers.split(",")
    if "off" not in names:
        sys.exit("--servers must include off: every cost is against it")
    receiver = Receiver.start(names)
    counts = []
    try:
        for name in names:
            counts.append(count(name, args, receiver, bodies, workdir))
            done = counts[-1]
            print(f"{name}: {done.requests} requests, {done.per_request / 1e6:.3f} M each", flush=True)
    finally:
        receiver.stop()
    text = markdown(counts, args)
    (REPORTS / "instructions.md").write_text(text)
    (REPORTS / "instructions.json").write_text(json.dumps([asdict(c) for c in counts], indent=2))
    print(f"\n{text}\nwritten to {REPORTS / 'instructions.md'} and instructions.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
