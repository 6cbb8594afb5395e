"""Side-by-side benchmark (`make bench`): the model alone, a plain FastAPI app, and our service with
telemetry off, with full telemetry, at 10% sampling and with adaptive batching, on the same machine
and the same documents (the test split).

Every HTTP configuration gets the same closed-loop load from wrk (C, one thread, JSON bodies cycled
by load_testing/wrk_bodies.lua). The run goes in rounds: each round measures every configuration
once, in a rotated order, so background noise lands on all of them alike; each ratio is computed
within a round and the median over rounds is reported. Besides requests per second, each row has
requests per CPU-second of the server's process tree, which other jobs on a shared machine disturb
far less. The OTLP receiver runs in its own process. Prints a Markdown table and writes it, with the
raw numbers, to reports/benchmark.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
from workload import (
    REPO,
    REPORTS,
    MemorySampler,
    documents,
    ensure_model,
    models_home,
    process_tree,
    use_project_defaults,
)

from helpers import GiveUp, free_port, poll_until, start_server, tail
from otlp_receiver import OtlpReceiver

WRK_SCRIPT = Path(__file__).with_name("wrk_bodies.lua")
FASTAPI_APP = "fastapi_app:app"
MODEL_BATCH = 64  # MAX_BATCH_SIZE shipped in the ConfigMap: the largest batch one request may carry
SERVER_ATTRIBUTE = "benchmark.server"  # resource attribute telling the receiver which server sent a span
EXPORT_DELAY = 6  # seconds: BatchSpanProcessor exports every 5 s

FASTAPI, OFF, NO_TRACES = "FastAPI + uvicorn", "ours, telemetry off", "ours, metrics and logs, no traces"
FULL, TENTH = "ours, full telemetry", "ours, 10% sampling"
# A second server configured as "off": the noise floor of every ratio, which compares two servers.
OFF_AGAIN = f"{OFF}, a second server (A/A control)"
OFF_BATCHED, FULL_BATCHED = f"{OFF}, adaptive batching", f"{FULL}, adaptive batching"
MANY = "{} ({} connections)"
FULL_COST, TENTH_COST = "full telemetry / telemetry off", "10% sampling / telemetry off"
AA_CONTROL = "A/A control: a second telemetry-off server / telemetry off"
BEST_VS_FASTAPI = "best of ours / FastAPI"


@dataclass(frozen=True)
class Config:
    """One of our servers: sampling rate, BentoML configuration overrides, environment."""

    sample_rate: float
    traced: bool
    overrides: dict | None = None
    env: dict | None = None


# Telemetry off: no traces sampled, BentoML's request metrics and access log disabled, and the
# service's own telemetry (prediction events, ML metrics, inference spans) switched off.
TELEMETRY_OFF = Config(
    0.0,
    False,
    {"services": {"metrics": {"enabled": False}, "logging": {"access": {"enabled": False}}}},
    {"TELEMETRY": "off"},
)
OUR_SERVERS = {
    "off": TELEMETRY_OFF,
    "off-again": TELEMETRY_OFF,
    "no-traces": Config(0.0, False),
    "full": Config(1.0, True),
    "tenth": Config(0.1, True),
}


@dataclass(frozen=True)
class Target:
    label: str
    server: str
    path: str
    bodies: str  # "single": {"text": ...}; "batch": {"texts": [...]} with one text
    connections: int


def targets(connections: int, many: int) -> list[Target]:
    """What each configuration serves: /predict, or /predict_batch with one text per request."""
    return [
        Target(FASTAPI, "fastapi", "/predict", "single", connections),
        Target(OFF, "off", "/predict", "single", connections),
        Target(NO_TRACES, "no-traces", "/predict", "single", connections),
        Target(FULL, "full", "/predict", "single", connections),
        Target(TENTH, "tenth", "/predict", "single", connections),
        Target(OFF_BATCHED, "off", "/predict_batch", "batch", connections),
        Target(OFF_AGAIN, "off-again", "/predict", "single", connections),
        Target(FULL_BATCHED, "full", "/predict_batch", "batch", connections),
        Target(MANY.format(FASTAPI, many), "fastapi", "/predict", "single", many),
        Target(MANY.format(FULL_BATCHED, many), "full", "/predict_batch", "batch", many),
    ]


# --- the OTLP receiver, in a process of its own ---------------------------------------------------


def serve_receiver(endpoints: multiprocessing.Queue, spans: dict[str, multiprocessing.Value]) -> None:
    """Counts the spans it receives by sending server; keeps none, so a long run does not grow it."""

    class CountingReceiver(OtlpReceiver):
        def record(self, request) -> None:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                counter = spans.get(attributes.get(SERVER_ATTRIBUTE, ""))
                if counter is not None:
                    with counter.get_lock():
                        counter.value += sum(len(scope.spans) for scope in resource_spans.scope_spans)

    receiver = CountingReceiver().start()
    endpoints.put(receiver.grpc_endpoint)
    threading.Event().wait()


@dataclass
class Receiver:
    process: multiprocessing.Process
    endpoint: str
    spans: dict[str, multiprocessing.Value]

    @classmethod
    def start(cls, servers: list[str]) -> Receiver:
        context = multiprocessing.get_context("spawn")  # gRPC does not survive a fork
        endpoints, spans = context.Queue(), {name: context.Value("q", 0) for name in servers}
        process = context.Process(target=serve_receiver, args=(endpoints, spans), daemon=True)
        process.start()
        return cls(process, endpoints.get(timeout=60), spans)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


# --- the servers ----------------------------------------------------------------------------------


@dataclass
class Running:
    url: str
    pid: int
    stop: Callable[[], object]
    requests: int = 0  # everything sent to it, warm-up included


def start_fastapi(model_folder: Path, workdir: Path) -> Running:
    port = free_port()
    log = workdir / "fastapi.log"
    env = {**os.environ, "MODEL_PATH": str(model_folder / "saved_model.pkl")}
    command = [sys.executable, "-m", "uvicorn", FASTAPI_APP, "--app-dir", str(Path(__file__).parent)]
    with open(log, "ab") as out:
        process = subprocess.Popen(  # a session of its own, as `bentoml serve` gets from start_server
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise GiveUp(f"uvicorn exited with {process.returncode}:\n{tail(log)}")
        return requests.get(f"{url}/healthz", timeout=2).ok

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        process.wait(20)

    try:
        poll_until(ready, timeout=90, what="the FastAPI app to be ready")
    except AssertionError:
        stop()
        raise
    return Running(url, process.pid, stop)


def start_ours(
    name: str, config: Config, workdir: Path, receiver: Receiver, wrapper: Sequence[str] = (), **env: str
) -> Running:
    server = start_server(
        models_home(),
        workdir / name,
        receiver.endpoint,
        "grpc",
        config.sample_rate,
        env={"OTEL_RESOURCE_ATTRIBUTES": f"{SERVER_ATTRIBUTE}={name}", **(config.env or {}), **env},
        config_overrides=config.overrides,
        wrapper=wrapper,
        timeout=600 if wrapper else 90,
    )
    return Running(server.url, server.process.pid, server.stop)


def start_servers(model_folder: Path, workdir: Path, receiver: Receiver) -> dict[str, Running]:
    servers: dict[str, Running] = {}
    try:
        servers["fastapi"] = start_fastapi(model_folder, workdir)
        for name, config in OUR_SERVERS.items():
            servers[name] = start_ours(name, config, workdir, receiver)
    except BaseException:
        stop_all(servers)
        raise
    return servers


def stop_all(servers: dict[str, Running]) -> None:
    for server in servers.values():
        server.stop()


# --- one load run -----------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    round: int
    requests: int
    seconds: float
    throughput: float  # requests per second of wall time
    per_cpu_second: float  # requests per CPU-second of the server's process tree
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int  # non-2xx responses and socket errors
    status_503: int
    server_cpu: float  # percent of one core, whole process tree
    generator_cpu: float  # wrk's, percent of one core
    tree_mib: float
    largest_mib: float


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def wrk(server: Running, target: Target, bodies: Path, seconds: int) -> tuple[dict, float]:
    """Runs wrk; returns its result line and the CPU seconds it used (from the kernel's accounting)."""
    command = ["wrk", "-t1", f"-c{target.connections}", f"-d{seconds}s", "--timeout", "30s"]
    command += ["-s", str(WRK_SCRIPT), server.url, "--", str(bodies), target.path]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.splitlines() if line.startswith("WRK_RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    result = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    server.requests += result["requests"]
    return result, usage.ru_utime + usage.ru_stime


def measure(target: Target, server: Running, bodies: Path, seconds: int, round_: int) -> Run:
    tree = process_tree(server.pid)
    server_cpu = cpu_seconds(tree)
    with MemorySampler(server.pid) as memory:
        result, generator_cpu = wrk(server, target, bodies, seconds)
    server_cpu = cpu_seconds(tree) - server_cpu
    elapsed = result["duration_us"] / 1e6
    statuses = {int(code): count for code, count in result["statuses"].items()}
    socket_errors = sum(result[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return Run(
        target=target.label,
        round=round_,
        requests=result["requests"],
        seconds=elapsed,
        throughput=result["requests"] / elapsed,
        per_cpu_second=result["requests"] / max(server_cpu, 1e-9),
        p50_ms=result["p50_us"] / 1000,
        p95_ms=result["p95_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=socket_errors + sum(count for code, count in statuses.items() if not 200 <= code < 300),
        status_503=statuses.get(503, 0),
        server_cpu=100 * server_cpu / elapsed,
        generator_cpu=100 * generator_cpu / elapsed,
        tree_mib=memory.peak.tree_mib,
        largest_mib=memory.peak.largest_mib,
    )


def progress(run: Run) -> str:
    return (
        f"round {run.round + 1}: {run.target:<58} {run.throughput:5.0f} req/s {run.per_cpu_second:5.0f} "
        f"req/CPU-s  p95 {run.p95_ms:6.1f} ms  server CPU {run.server_cpu:3.0f}%  errors {run.errors}"
    )


# --- the model alone ------------------------------------------------------------------------------------


def percentiles_ms(seconds: list[float]) -> dict:
    p50, p95, p99 = np.percentile(np.array(seconds) * 1000, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def time_calls(call, inputs: list, items_per_call: int, seconds: float) -> dict:
    """Calls `call` on the inputs in turn for `seconds`: items per second of wall and of CPU time,
    and each call's latency."""
    took: list[float] = []
    cpu_started, deadline = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call(inputs[len(took) % len(inputs)])
        took.append(time.perf_counter() - started)
    items = len(took) * items_per_call
    return {
        "throughput": items / sum(took),
        "per_cpu_second": items / (time.process_time() - cpu_started),
        **percentiles_ms(took),
    }


def model_alone(model_folder: Path, seconds: float) -> dict:
    """Tokenise and predict in this process, one document per call and MODEL_BATCH per call."""
    import joblib

    from newsgroups_classifier.model import tokenize

    pipeline = joblib.load(model_folder / "saved_model.pkl")
    texts = documents().texts
    batches = [texts[i : i + MODEL_BATCH] for i in range(0, len(texts) - MODEL_BATCH + 1, MODEL_BATCH)]
    return {
        "single": time_calls(lambda text: pipeline.predict_proba([tokenize(text)]), texts, 1, seconds),
        f"batches of {MODEL_BATCH}": time_calls(
            lambda batch: pipeline.predict_proba([tokenize(text) for text in batch]),
            batches,
            MODEL_BATCH,
            seconds,
        ),
        "rss_mib": psutil.Process().memory_info().rss / 2**20,
    }


def run_model_alone(model_folder: Path, seconds: float) -> dict:
    """In a fresh process, so that its memory is the model's alone."""
    output = subprocess.run(
        [sys.executable, __file__, "--model-alone", str(model_folder), "--model-seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(output.splitlines()[-1])


# --- summary ---------------------------------------------------------------------------------------------

MEDIAN_FIELDS = ("throughput", "per_cpu_second", "p50_ms", "p95_ms", "p99_ms", "server_cpu", "generator_cpu")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(target: Target, runs: list[Run]) -> dict:
    mine = [run for run in runs if run.target == target.label]
    return {
        "target": target.label,
        "path": target.path,
        "connections": target.connections,
        **{key: median([getattr(run, key) for run in mine]) for key in MEDIAN_FIELDS},
        "requests": sum(run.requests for run in mine),
        "errors": sum(run.errors for run in mine),
        "status_503": sum(run.status_503 for run in mine),
        "tree_mib": max(run.tree_mib for run in mine),
        "largest_mib": max(run.largest_mib for run in mine),
    }


def summarise_model_alone(rounds: list[dict]) -> list[dict]:
    """Median over rounds, per kind of call, in the table's columns."""
    rss = median([measured["rss_mib"] for measured in rounds])
    return [
        {
            "target": f"model alone, {kind} (docs)",
            "path": "in-process",
            "connections": 1,
            "tree_mib": rss,
            "largest_mib": rss,
            **{key: median([measured[kind][key] for measured in rounds]) for key in rounds[0][kind]},
        }
        for kind in rounds[0]
        if kind != "rss_mib"
    ]


def ratio(runs: list[Run], numerator: str | list[str], denominator: str, key: str) -> dict:
    """Per round: `key` of `numerator` (the best of a list) over that of `denominator`; median of rounds."""
    names = [numerator] if isinstance(numerator, str) else numerator
    per_round = []
    for round_ in sorted({run.round for run in runs}):
        value = {run.target: getattr(run, key) for run in runs if run.round == round_}
        per_round.append(max(value[name] for name in names) / value[denominator])
    return {"median": median(per_round), "rounds": per_round}


def ratios(runs: list[Run], many: int) -> dict:
    ours = [OFF, NO_TRACES, FULL, TENTH, OFF_BATCHED, FULL_BATCHED]
    pairs = {
        AA_CONTROL: (OFF_AGAIN, OFF),
        FULL_COST: (FULL, OFF),
        TENTH_COST: (TENTH, OFF),
        "metrics and logs, no traces / telemetry off": (NO_TRACES, OFF),
        "full telemetry / telemetry off, both with batching": (FULL_BATCHED, OFF_BATCHED),
        BEST_VS_FASTAPI: (ours, FASTAPI),
        "ours, full telemetry / FastAPI, same endpoint (/predict)": (FULL, FASTAPI),
        f"ours, full telemetry, batching / FastAPI, {many} connections": (
            MANY.format(FULL_BATCHED, many),
            MANY.format(FASTAPI, many),
        ),
    }
    return {
        name: {key: ratio(runs, top, bottom, key) for key in ("per_cpu_second", "throughput")}
        for name, (top, bottom) in pairs.items()
    }


def trace_export(servers: dict[str, Running], receiver: Receiver, receiver_cpu: float) -> list[dict]:
    """Spans the receiver got from each traced server, per request it served."""
    rows = []
    for name, counter in receiver.spans.items():
        requests_ = servers[name].requests
        rows.append({"server": name, "requests": requests_, "spans": counter.value})
        rows[-1]["spans_per_request"] = counter.value / max(1, requests_)
    total = sum(row["spans"] for row in rows)
    return [*rows, {"receiver_cpu_seconds": receiver_cpu, "spans": total}]


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    import bentoml
    import fastapi
    import sklearn
    import uvicorn

    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": f"bentoml {bentoml.__version__}, scikit-learn {sklearn.__version__}, "
        f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}, {wrk_version.split(' [')[0]}",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass
class Report:
    machine: dict
    settings: dict
    model_alone: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    ratios: dict = field(default_factory=dict)
    trace_export: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)


def noise_floor(report: Report) -> float:
    """The error of a median ratio of two servers in this run, from the A/A control: the standard
    error of its rounds' median (interquartile range / 1.35, a standard deviation robust to outliers,
    times 1.25 / sqrt(rounds)) combined with how far that median is from 1, since two identically
    configured servers can differ by several percent for a whole run."""
    control = report.ratios[AA_CONTROL]["per_cpu_second"]
    quartiles = np.percentile(control["rounds"], [25, 75])
    spread = (quartiles[1] - quartiles[0]) / 1.35 * 1.25 / len(control["rounds"]) ** 0.5
    return float(math.hypot(spread, control["median"] - 1))


def judge(cost: float, target: float, noise: float) -> bool | None:
    """Whether a measured cost is within its target: None (unresolved) when it is within two noise
    floors of the target, where the run cannot tell which side of the target the cost is on."""
    return None if abs(cost - target) < 2 * noise else cost <= target


def verdicts(report: Report) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (target, measured, met). Ratios are judged per server CPU-second, each
    cost against the run's noise floor (`judge`)."""
    noise = noise_floor(report)

    def cost(name: str) -> tuple[float, float]:
        value = report.ratios[name]
        return 1 - value["per_cpu_second"]["median"], 1 - value["throughput"]["median"]

    full, tenth = cost(FULL_COST), cost(TENTH_COST)
    best = [report.ratios[BEST_VS_FASTAPI][key]["median"] for key in ("per_cpu_second", "throughput")]
    batched = [row for row in report.rows if "batching" in row["target"]]
    worker = max(row["largest_mib"] for row in report.rows if row["target"].startswith("ours"))
    both = "{:.1%} per CPU-second ({:.1%} in req/s), noise floor {:.1%}"
    return [
        (
            "full telemetry costs at most 10% of throughput",
            both.format(*full, noise),
            judge(full[0], 0.10, noise),
        ),
        ("10% sampling costs at most 3%", both.format(*tenth, noise), judge(tenth[0], 0.03, noise)),
        (
            "our best configuration at least matches FastAPI",
            "{:.2f}x per CPU-second ({:.2f}x in req/s)".format(*best),
            best[0] >= 1.0,
        ),
        (
            "adaptive batching returns no 503",
            f"{sum(row['status_503'] for row in batched)} of {sum(row['requests'] for row in batched)}",
            all(row["status_503"] == 0 for row in batched),
        ),
        ("worker memory under 400 MiB", f"{worker:.0f} MiB", worker < 400),
    ]


VERDICT = {True: "yes", False: "NO", None: "unresolved: within two noise floors of the target"}

# (header, key, format) of each column of the table; "-" where a row has no such number.
COLUMNS = [
    ("configuration", "target", ""),
    ("endpoint", "path", ""),
    ("conns", "connections", ""),
    ("req/s", "throughput", ".0f"),
    ("req/CPU-s", "per_cpu_second", ".0f"),
    ("p50 ms", "p50_ms", ".1f"),
    ("p95 ms", "p95_ms", ".1f"),
    ("p99 ms", "p99_ms", ".1f"),
    ("errors", "errors", ""),
    ("503", "status_503", ""),
    ("server CPU %", "server_cpu", ".0f"),
    ("wrk CPU %", "generator_cpu", ".1f"),
    ("tree RSS MiB", "tree_mib", ".0f"),
    ("largest process MiB", "largest_mib", ".0f"),
]


def table_row(values: dict) -> str:
    cells = [format(values[key], spec) if key in values else "-" for _, key, spec in COLUMNS]
    return "| " + " | ".join(cells) + " |"


def markdown(report: Report) -> str:
    settings = report.settings
    lines = [
        f"{settings['rounds']} rounds of {settings['seconds']} s per configuration, wrk closed loop "
        f"(1 thread), {settings['documents']} test-split documents cycled; medians over rounds. "
        "req/CPU-s: requests per CPU-second of the server's whole process tree.\n",
        "| " + " | ".join(header for header, _, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *[table_row(row) for row in report.model_alone + report.rows],
        "\n| ratio (within each round: median, then each round) | per CPU-second | req/s |",
        "|---|---|---|",
    ]
    for name, value in report.ratios.items():
        cells = [
            f"{value[key]['median']:.3f} ({', '.join(f'{x:.3f}' for x in value[key]['rounds'])})"
            for key in ("per_cpu_second", "throughput")
        ]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    *servers, receiver = report.trace_export
    lines += ["\n| traced server | requests | spans received | spans/request |", "|---|---|---|---|"]
    lines += [
        f"| {r['server']} | {r['requests']} | {r['spans']} | {r['spans_per_request']:.2f} |" for r in servers
    ]
    per_thousand = 1000 * receiver["receiver_cpu_seconds"] / max(1, receiver["spans"])
    lines.append(
        f"\nOTLP receiver: {receiver['receiver_cpu_seconds']:.1f} CPU-s, {per_thousand:.3f} per 1000 spans."
    )
    lines += ["\n| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {VERDICT[met]} |" for name, measured, met in verdicts(report)]
    lines.append("\nMachine: " + "; ".join(f"{key}: {value}" for key, value in report.machine.items()))
    return "\n".join(lines) + "\n"


# --- the run -----------------------------------------------------------------------------------------


def write_bodies(folder: Path, texts: list[str]) -> dict[str, Path]:
    paths = {"single": folder / "single.jsonl", "batch": folder / "batch.jsonl"}
    paths["single"].write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    paths["batch"].write_text("".join(json.dumps({"texts": [text]}) + "\n" for text in texts))
    return paths


def run_rounds(args: argparse.Namespace, plan: list[Target], servers: dict, bodies: dict, model: Path):
    for target in plan:  # warm up each path once (thread pools, caches, batching's latency model)
        wrk(servers[target.server], target, bodies[target.bodies], args.warmup)
    runs: list[Run] = []
    alone: list[dict] = []
    for round_ in range(args.rounds):
        alone.append(run_model_alone(model, args.model_seconds))
        shift = round_ % len(plan)
        for target in plan[shift:] + plan[:shift]:  # rotated, so no configuration always goes first
            runs.append(measure(target, servers[target.server], bodies[target.bodies], args.seconds, round_))
            print(progress(runs[-1]), flush=True)
    return runs, alone


def benchmark(args: argparse.Namespace) -> Report:
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: `make bench-tools` installs the pinned version")
    use_project_defaults()
    model = ensure_model(models_home())
    texts = documents().texts
    workdir = REPORTS / "bench"  # servers' homes and logs, kept until the next run
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    bodies = write_bodies(workdir, texts)
    plan = targets(args.connections, args.many)
    settings = {"rounds": args.rounds, "seconds": args.seconds, "documents": len(texts)}
    report = Report(machine=machine(), settings=settings)
    receiver = Receiver.start([name for name, config in OUR_SERVERS.items() if config.traced])
    try:
        servers = start_servers(model, workdir, receiver)
        try:
            runs, alone = run_rounds(args, plan, servers, bodies, model)
            time.sleep(EXPORT_DELAY)  # the last spans
            receiver_cpu = cpu_seconds([psutil.Process(receiver.process.pid)])
        finally:
            stop_all(servers)
    finally:
        receiver.stop()
    report.model_alone = summarise_model_alone(alone)
    report.rows = [summarise(target, runs) for target in plan]
    report.ratios = ratios(runs, args.many)
    report.trace_export = trace_export(servers, receiver, receiver_cpu)
    report.runs = [asdict(run) for run in runs]
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=int, default=4, help="length of each measured load run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load per configuration first")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections of the main rows")
    parser.add_argument("--many", type=int, default=64, help="connections of the many-clients rows")
    parser.add_argument("--model-seconds", type=float, default=2, help="per kind of call, model alone")
    parser.add_argument("--model-alone", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model_alone:
        print(json.dumps(model_alone(args.model_alone, args.model_seconds)))
        return 0
    report = benchmark(args)
    text = markdown(report)
    (REPORTS / "benchmark.md").write_text(text)
    (REPORTS / "benchmark.json").write_text(json.dumps(asdict(report), indent=2))
    print(f"\n{text}\nwritten to {REPORTS / 'benchmark.md'} and benchmark.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
