"""`make loadtest`: Locust, headless and bounded, with CSV and HTML reports under reports/.

Against --host (or LOADTEST_HOST) when given; otherwise it trains a model if none is stored, starts
the service locally with the shipped configuration (its sampled traces to a real OTLP receiver started
here), runs Locust against it, and also checks the worker's peak memory. Exits non-zero when a
threshold fails. Other arguments go to Locust, e.g. `--users 50 --run-time 2m --max-p95-ms 300`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from support.otlp_receiver import OtlpReceiver
from support.service_process import start_server
from support.workload import REPO, REPORTS, MemorySampler, ensure_model, models_home, use_project_defaults

CONFIG = Path(__file__).with_name("locust.conf")
REPORT_PREFIX = REPORTS / "loadtest"


def locust(host: str, extra: list[str]) -> tuple[int, float]:
    """Runs Locust; returns its exit code and the CPU seconds it used."""
    command = [str(Path(sys.executable).with_name("locust")), "--config", str(CONFIG), "--host", host]
    command += ["--csv", str(REPORT_PREFIX), "--html", f"{REPORT_PREFIX}.html", *extra]
    print("$ " + " ".join(command), flush=True)
    process = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def against_local_service(extra: list[str], max_worker_mib: float) -> int:
    ensure_model(models_home())
    workdir = REPORTS / "loadtest-service"  # its BentoML home and log, kept until the next run
    shutil.rmtree(workdir, ignore_errors=True)
    receiver = OtlpReceiver().start()
    server = start_server(models_home(), workdir, receiver.grpc_endpoint, "grpc")  # sampling as shipped
    try:
        print(
            f"service on {server.url} (log: {server.log_path}), traces to {receiver.grpc_endpoint}",
            flush=True,
        )
        with MemorySampler(server.process.pid) as memory:
            code, cpu = locust(server.url, extra)
    finally:
        server.stop()
        receiver.stop()
    print(f"locust used {cpu:.1f} CPU-s; the receiver got {len(receiver.spans)} spans")
    worker = memory.peak.largest_mib
    print(
        f"peak memory: service process tree {memory.peak.tree_mib:.0f} MiB, largest process {worker:.0f} MiB"
    )
    if worker > max_worker_mib:
        print(
            f"threshold failed: worker memory {worker:.0f} MiB is over {max_worker_mib:g} MiB",
            file=sys.stderr,
        )
        code = code or 1
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default=os.environ.get("LOADTEST_HOST"), help="a running service to test")
    parser.add_argument(
        "--max-worker-mib", type=float, default=400, help="local service: worker memory bound"
    )
    args, extra = parser.parse_known_args(argv)
    use_project_defaults()
    REPORTS.mkdir(exist_ok=True)
    if args.host:
        code, cpu = locust(args.host, extra)
        print(f"locust used {cpu:.1f} CPU-s")
    else:
        code = against_local_service(extra, args.max_worker_mib)
    print(f"reports: {REPORT_PREFIX}.html and {REPORT_PREFIX}_*.csv; {'PASSED' if code == 0 else 'FAILED'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
