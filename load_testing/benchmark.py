"""Side-by-side benchmark (`make bench`): our service against the FastAPI app a user would write
instead (plain, and with the same telemetry), our code before the lean request path (BASELINE_REVISION),
what our telemetry costs, and the levers that move our speed (adaptive batching of /predict, BentoML's
access log, workers, sampling), on the same machine and the same documents (the test split). Every lever
is the shipped service with one setting changed (environment or BentoML configuration).

Every server gets the same closed-loop load from wrk (one thread, JSON bodies cycled by
load_testing/wrk_bodies.lua). The run goes in rounds: each round measures every target once, in a
rotated order, so background noise lands on all of them alike; each ratio is computed within a round
and the median over rounds is reported, in requests per CPU-second of the server's process tree
(which other jobs on a shared machine disturb far less than requests per second). A second
telemetry-off server, configured exactly like the first, is the A/A control: how far apart two
identical servers come out is the run's noise floor, reported with every ratio. The OTLP receiver
runs in its own process. Prints a Markdown table and writes it, with the raw numbers, to
reports/benchmark.{md,json}.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests

from newsgroups_classifier.local_config import shipped_bentoml_config, shipped_service_env
from support.otlp_receiver import OtlpReceiver
from support.processes import GiveUp, free_port, poll_until, tail
from support.service_process import start_server
from support.workload import (
    REPO,
    REPORTS,
    MemorySampler,
    documents,
    ensure_model,
    models_home,
    process_tree,
    use_project_defaults,
)

HERE = Path(__file__).parent
WRK_SCRIPT = HERE / "wrk_bodies.lua"
MODEL_BATCH = int(shipped_service_env()["MAX_BATCH_SIZE"])  # the largest batch one request may carry
SERVER_ATTRIBUTE = "benchmark.server"  # resource attribute telling the receiver which server sent a span
EXPORT_DELAY = 6  # seconds: BatchSpanProcessor exports every 5 s


# The code this run is compared with, as it shipped: the last revision before the lean request path.
BASELINE_REVISION = "bab3330"


@dataclass(frozen=True)
class Server:
    """One server of the run: ours (the shipped service with some settings: environment, or `bentoml`
    overrides of BentoML's configuration), ours at BASELINE_REVISION, or a FastAPI app."""

    kind: str  # "ours", "baseline" or "fastapi"
    sample_rate: float | None = None  # the share of requests traced; None: as shipped
    env: dict = field(default_factory=dict)
    bentoml: dict = field(default_factory=dict)


SHIPPED_SAMPLING = float(shipped_service_env()["OTEL_TRACES_SAMPLER_ARG"])
# Telemetry off: no spans, request or ML metrics, or events (BentoML's own are off as shipped).
OFF = Server("ours", 0.0, {"TELEMETRY": "off"})
SERVERS = {
    "fastapi": Server("fastapi", 0.0),
    "peer": Server("fastapi", SHIPPED_SAMPLING, {"PEER_TELEMETRY": "on"}),  # traces as many requests
    "baseline": Server("baseline", 1.0),  # as it shipped then
    "off": OFF,
    "off-again": OFF,  # the A/A control
    "full": Server("ours"),
    "all-traced": Server("ours", 1.0),
    "no-traces": Server("ours", 0.0),
    "unbatched": Server("ours", env={"ADAPTIVE_BATCHING": "off"}),
    "access-log": Server("ours", bentoml={"services": {"logging": {"access": {"enabled": True}}}}),
    "two-workers": Server("ours", env={"WORKERS": "2"}),
}
TRACED = [name for name, server in SERVERS.items() if server.sample_rate is None or server.sample_rate > 0]


@dataclass(frozen=True)
class Target:
    label: str
    server: str
    path: str  # /predict_batch with one text per request: adaptive batching merges the requests


SINGLE, BATCHED = "/predict", "/predict_batch"
TARGETS = [
    Target("FastAPI, no telemetry", "fastapi", SINGLE),
    Target("FastAPI with the same telemetry (the peer)", "peer", SINGLE),
    Target("ours, telemetry off", "off", SINGLE),
    Target("ours, telemetry off, a second server (A/A control)", "off-again", SINGLE),
    Target("ours, as shipped (full telemetry)", "full", SINGLE),
    Target("ours, as shipped, /predict_batch with one text per request", "full", BATCHED),
    Target(f"ours at {BASELINE_REVISION}, as shipped then", "baseline", SINGLE),
    Target("ours, every request traced", "all-traced", SINGLE),
    Target("ours, metrics and logs, no traces", "no-traces", SINGLE),
    Target("ours, no adaptive batching (ADAPTIVE_BATCHING=off)", "unbatched", SINGLE),
    Target("ours, BentoML's access log on", "access-log", SINGLE),
    Target("ours, 2 workers", "two-workers", SINGLE),
]
LABEL = {(target.server, target.path): target.label for target in TARGETS}
AA_CONTROL = "A/A control: a second telemetry-off server / telemetry off"
NEW_OLD = f"ours as shipped / ours at {BASELINE_REVISION}, single requests"
FULL_OFF = "full telemetry / telemetry off"
PEER_SINGLE, PEER_BATCHED = "ours / peer, single requests", "ours, /predict_batch / peer"
# name -> (numerator, denominator): each a (server, path) of TARGETS.
RATIOS = {
    AA_CONTROL: (("off-again", SINGLE), ("off", SINGLE)),
    NEW_OLD: (("full", SINGLE), ("baseline", SINGLE)),
    PEER_SINGLE: (("full", SINGLE), ("peer", SINGLE)),
    PEER_BATCHED: (("full", BATCHED), ("peer", SINGLE)),
    "ours / FastAPI without telemetry": (("full", SINGLE), ("fastapi", SINGLE)),
    "peer / FastAPI without telemetry": (("peer", SINGLE), ("fastapi", SINGLE)),
    FULL_OFF: (("full", SINGLE), ("off", SINGLE)),
    "every request traced / telemetry off": (("all-traced", SINGLE), ("off", SINGLE)),
    "metrics and logs, no traces / telemetry off": (("no-traces", SINGLE), ("off", SINGLE)),
    "lever: /predict batched / not batched": (("full", SINGLE), ("unbatched", SINGLE)),
    "lever: BentoML's access log on / off": (("access-log", SINGLE), ("full", SINGLE)),
    "lever: 2 workers / 1": (("two-workers", SINGLE), ("full", SINGLE)),
    "lever: shipped sampling / every request traced": (("full", SINGLE), ("all-traced", SINGLE)),
}


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


def start_fastapi(
    name: str, server: Server, model_folder: Path, workdir: Path, receiver: Receiver
) -> Running:
    port, log = free_port(), workdir / f"{name}.log"
    env = {
        **os.environ,
        "MODEL_PATH": str(model_folder / "saved_model.pkl"),
        "OTLP_ENDPOINT": receiver.endpoint,
        "SAMPLE_RATE": str(server.sample_rate),
        "OTEL_RESOURCE_ATTRIBUTES": f"{SERVER_ATTRIBUTE}={name}",
        **server.env,
    }
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(HERE), "--no-access-log"]
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
        poll_until(ready, timeout=90, what=f"the FastAPI app {name} to be ready")
    except AssertionError:
        stop()
        raise
    return Running(url, process.pid, stop)


def start_ours(name: str, server: Server, workdir: Path, receiver: Receiver) -> Running:
    running = start_server(
        models_home(),
        workdir / name,
        receiver.endpoint,
        "grpc",
        server.sample_rate,
        env={"OTEL_RESOURCE_ATTRIBUTES": f"{SERVER_ATTRIBUTE}={name}", **server.env},
        bentoml_config=merged(shipped_bentoml_config(), server.bentoml),
    )
    return Running(running.url, running.process.pid, running.stop)


def start_baseline(name: str, server: Server, workdir: Path, receiver: Receiver) -> Running:
    """Ours at BASELINE_REVISION, from a temporary git worktree, configured as it shipped then: tracing
    in BentoML's configuration (to the receiver, at `sample_rate`), its ConfigMap's environment."""
    tree = workdir / "baseline-revision"
    subprocess.run(["git", "worktree", "add", "--detach", tree, BASELINE_REVISION], cwd=REPO, check=True)
    configmap = tree / "manifests" / "configmap.yaml"
    config = shipped_bentoml_config(configmap)
    config["services"]["tracing"].update(sample_rate=server.sample_rate)
    config["services"]["tracing"]["otlp"]["endpoint"] = receiver.endpoint
    running = start_server(
        models_home(),
        workdir / name,
        receiver.endpoint,
        "grpc",
        server.sample_rate,
        env={
            **shipped_service_env(configmap),
            "PYTHONPATH": str(tree / "src"),  # its package, not the installed one
            "OTEL_RESOURCE_ATTRIBUTES": f"{SERVER_ATTRIBUTE}={name}",
        },
        bentoml_config=config,
    )

    def stop() -> None:
        running.stop()
        subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO, check=True)

    return Running(running.url, running.process.pid, stop)


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, nested dictionaries key by key."""
    result = dict(base)
    for key, value in overrides.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and key in result else value
    return result


def start_servers(model_folder: Path, workdir: Path, receiver: Receiver) -> dict[str, Running]:
    starts = {"ours": start_ours, "baseline": start_baseline}
    servers: dict[str, Running] = {}
    try:
        for name, server in SERVERS.items():
            if server.kind == "fastapi":
                servers[name] = start_fastapi(name, server, model_folder, workdir, receiver)
            else:
                servers[name] = starts[server.kind](name, server, workdir, receiver)
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


def wrk(server: Running, path: str, bodies: Path, connections: int, seconds: float) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    command += ["-s", str(WRK_SCRIPT), server.url, "--", str(bodies), path]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(lines[-1].removeprefix("WRK_RESULT "))
    server.requests += result["requests"]
    return result


def measure(target: Target, server: Running, bodies: Path, args: argparse.Namespace, round_: int) -> Run:
    tree = process_tree(server.pid)
    started_cpu = cpu_seconds(tree)
    with MemorySampler(server.pid) as memory:
        result = wrk(server, target.path, bodies, args.connections, args.seconds)
    server_cpu = cpu_seconds(tree) - started_cpu
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
        tree_mib=memory.peak.tree_mib,
        largest_mib=memory.peak.largest_mib,
    )


# --- the model alone ------------------------------------------------------------------------------------


def time_calls(call, inputs: list, items_per_call: int, seconds: float) -> dict:
    """Calls `call` on the inputs in turn for `seconds`: items per CPU-second and each call's p50."""
    took: list[float] = []
    cpu_started, deadline = time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call(inputs[len(took) % len(inputs)])
        took.append(time.perf_counter() - started)
    items = len(took) * items_per_call
    return {"per_cpu_second": items / (time.process_time() - cpu_started), "p50_ms": 1000 * median(took)}


def model_alone(model_folder: Path, seconds: float) -> dict:
    """Tokenise and predict in this process, one document per call and MODEL_BATCH per call."""
    import joblib

    from newsgroups_classifier.model import tokenize

    pipeline = joblib.load(model_folder / "saved_model.pkl")
    texts = documents().texts
    batches = [texts[i : i + MODEL_BATCH] for i in range(0, len(texts) - MODEL_BATCH + 1, MODEL_BATCH)]
    return {
        "model alone, one document per call": time_calls(
            lambda text: pipeline.predict_proba([tokenize(text)]), texts, 1, seconds
        ),
        f"model alone, {MODEL_BATCH} documents per call": time_calls(
            lambda batch: pipeline.predict_proba([tokenize(text) for text in batch]),
            batches,
            MODEL_BATCH,
            seconds,
        ),
    }


# --- summary ---------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(target: Target, runs: list[Run]) -> dict:
    mine = [run for run in runs if run.target == target.label]
    keys = ("throughput", "per_cpu_second", "p50_ms", "p95_ms", "p99_ms", "server_cpu")
    return {
        "target": target.label,
        "path": target.path,
        **{key: median([getattr(run, key) for run in mine]) for key in keys},
        "requests": sum(run.requests for run in mine),
        "errors": sum(run.errors for run in mine),
        "status_503": sum(run.status_503 for run in mine),
        "largest_mib": max(run.largest_mib for run in mine),
    }


def ratios(runs: list[Run]) -> dict:
    """Per round, per CPU-second of the numerator's target over the denominator's; their median."""
    result = {}
    for name, (top, bottom) in RATIOS.items():
        per_round = []
        for round_ in sorted({run.round for run in runs}):
            value = {run.target: run.per_cpu_second for run in runs if run.round == round_}
            per_round.append(value[LABEL[top]] / value[LABEL[bottom]])
        result[name] = {"median": median(per_round), "rounds": per_round}
    return result


@dataclass
class Report:
    machine: dict
    settings: dict
    model_alone: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    ratios: dict = field(default_factory=dict)
    spans: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)


def noise_floor(report: Report) -> float:
    """The error of a median ratio of two servers in this run, from the A/A control: the standard
    error of its rounds' median (interquartile range / 1.35, a standard deviation robust to outliers,
    times 1.25 / sqrt(rounds)) combined with how far that median is from 1, since two identically
    configured servers can differ by several percent for a whole run."""
    control = report.ratios[AA_CONTROL]
    quartiles = np.percentile(control["rounds"], [25, 75])
    spread = (quartiles[1] - quartiles[0]) / 1.35 * 1.25 / len(control["rounds"]) ** 0.5
    return float(math.hypot(spread, control["median"] - 1))


def judge(measured: float, target: float, noise: float, at_least: bool = True) -> bool | None:
    """Whether a measured ratio meets its target (at least, or at most, `target`): None (unresolved)
    when it is within two noise floors of the target, where the run cannot tell which side it is on."""
    if abs(measured - target) < 2 * noise:
        return None
    return measured >= target if at_least else measured <= target


def verdicts(report: Report) -> list[tuple[str, str, bool | None]]:
    """The goals of docs/benchmarks.md, each judged against this run's noise floor."""
    noise = noise_floor(report)

    def ratio(name: str) -> float:
        return report.ratios[name]["median"]

    def row(server: str, path: str = SINGLE) -> dict:
        return next(row for row in report.rows if row["target"] == LABEL[server, path])

    new_p99, old_p99 = row("full")["p99_ms"], row("baseline")["p99_ms"]
    shipped = [row("full"), row("full", BATCHED)]
    worker = max(row["largest_mib"] for row in report.rows if row["target"].startswith("ours"))
    return [
        (f"{NEW_OLD}, at least 3x", f"{ratio(NEW_OLD):.2f}x", judge(ratio(NEW_OLD), 3.0, noise)),
        (
            f"p99 latency, single requests, no worse than at {BASELINE_REVISION}",
            f"{new_p99:.1f} ms, then {old_p99:.1f} ms",
            new_p99 <= old_p99,
        ),
        (
            "full telemetry costs at most 15% (full / off at least 0.85)",
            f"{1 - ratio(FULL_OFF):.1%}",
            judge(ratio(FULL_OFF), 0.85, noise),
        ),
        *(
            (f"{name}, at least {goal}x", f"{ratio(name):.2f}x", judge(ratio(name), goal, noise))
            for name, goal in ((PEER_SINGLE, 1.5), (PEER_BATCHED, 2.5))
        ),
        (
            "adaptive batching as shipped returns no 503",
            " and ".join(f"{r['status_503']} of {r['requests']}" for r in shipped),
            all(r["status_503"] == 0 for r in shipped),
        ),
        ("worker memory under 400 MiB", f"{worker:.0f} MiB", worker < 400),
    ]


VERDICT = {True: "yes", False: "NO", None: "unresolved: within two noise floors"}
COLUMNS = [
    ("configuration", "target", ""),
    ("endpoint", "path", ""),
    ("req/s", "throughput", ".0f"),
    ("req/CPU-s", "per_cpu_second", ".0f"),
    ("p50 ms", "p50_ms", ".1f"),
    ("p95 ms", "p95_ms", ".1f"),
    ("p99 ms", "p99_ms", ".1f"),
    ("errors", "errors", ""),
    ("503", "status_503", ""),
    ("server CPU %", "server_cpu", ".0f"),
    ("largest process MiB", "largest_mib", ".0f"),
]


def markdown(report: Report) -> str:
    settings, noise = report.settings, noise_floor(report)
    lines = [
        f"{settings['rounds']} rounds of {settings['seconds']} s per target, wrk closed loop (1 thread, "
        f"{settings['connections']} connections), {settings['documents']} test-split documents cycled; "
        "medians over rounds. req/CPU-s: requests per CPU-second of the server's whole process tree.\n",
        "| " + " | ".join(header for header, _, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in report.rows:
        cells = [format(row[key], spec) if key in row else "-" for _, key, spec in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["\n| model alone, in one process | documents/CPU-s | p50 ms per call |", "|---|---|---|"]
    lines += [
        f"| {kind} | {m['per_cpu_second']:.0f} | {m['p50_ms']:.2f} |"
        for kind, m in report.model_alone.items()
    ]
    lines += [
        f"\nNoise floor of this run (A/A control): {noise:.1%}.\n",
        "| ratio per CPU-second | median | rounds |",
        "|---|---|---|",
    ]
    for name, value in report.ratios.items():
        lines.append(f"| {name} | {value['median']:.3f} | {', '.join(f'{x:.2f}' for x in value['rounds'])} |")
    lines += ["\n| traced server | requests | spans received | spans/request |", "|---|---|---|---|"]
    for name, (sent, spans) in report.spans.items():
        lines.append(f"| {name} | {sent} | {spans} | {spans / max(1, sent):.2f} |")
    lines += ["\n| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {VERDICT[met]} |" for name, measured, met in verdicts(report)]
    lines.append("\nMachine: " + "; ".join(f"{key}: {value}" for key, value in report.machine.items()))
    return "\n".join(lines) + "\n"


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    import bentoml
    import fastapi
    import sklearn
    import uvicorn

    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "python": platform.python_version(),
        "versions": f"bentoml {bentoml.__version__}, scikit-learn {sklearn.__version__}, "
        f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- the run -----------------------------------------------------------------------------------------


def run_rounds(args: argparse.Namespace, servers: dict[str, Running], bodies: dict[str, Path]) -> list[Run]:
    for target in TARGETS:  # warm up each path once (thread pools, caches, batching's latency model)
        wrk(servers[target.server], target.path, bodies[target.path], args.connections, args.warmup)
    runs: list[Run] = []
    for round_ in range(args.rounds):
        shift = round_ % len(TARGETS)
        for target in TARGETS[shift:] + TARGETS[:shift]:  # rotated: no target always goes first
            runs.append(measure(target, servers[target.server], bodies[target.path], args, round_))
            run = runs[-1]
            print(
                f"round {round_ + 1}: {target.label:<52} {run.per_cpu_second:5.0f} req/CPU-s "
                f"{run.throughput:5.0f} req/s  p95 {run.p95_ms:6.1f} ms  errors {run.errors}",
                flush=True,
            )
    return runs


def benchmark(args: argparse.Namespace) -> Report:
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: `make bench-tools` installs the pinned version")
    use_project_defaults()
    model = ensure_model(models_home())
    texts = documents().texts
    workdir = REPORTS / "bench"  # servers' homes and logs, kept until the next run
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    bodies = {SINGLE: workdir / "single.jsonl", BATCHED: workdir / "batch.jsonl"}
    bodies[SINGLE].write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    bodies[BATCHED].write_text("".join(json.dumps({"texts": [text]}) + "\n" for text in texts))
    settings = {key: getattr(args, key) for key in ("rounds", "seconds", "connections")}
    report = Report(machine=machine(), settings={**settings, "documents": len(texts)})
    report.model_alone = model_alone(model, args.model_seconds)
    receiver = Receiver.start(TRACED)
    try:
        servers = start_servers(model, workdir, receiver)
        try:
            runs = run_rounds(args, servers, bodies)
            time.sleep(EXPORT_DELAY)  # the last spans
        finally:
            stop_all(servers)
    finally:
        receiver.stop()
    report.rows = [summarise(target, runs) for target in TARGETS]
    report.ratios = ratios(runs)
    report.spans = {name: (servers[name].requests, receiver.spans[name].value) for name in TRACED}
    report.runs = [asdict(run) for run in runs]
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=int, default=4, help="length of each measured load run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load per target first")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--model-seconds", type=float, default=3, help="per kind of call, model alone")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    report = benchmark(parse_args(argv))
    text = markdown(report)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "benchmark.md").write_text(text)
    (REPORTS / "benchmark.json").write_text(json.dumps(asdict(report), indent=2))
    print(f"\n{text}\nwritten to {REPORTS / 'benchmark.md'} and benchmark.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
