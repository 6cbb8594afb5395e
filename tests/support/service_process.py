"""The service as a `bentoml serve` subprocess on 127.0.0.1, the training command, and /metrics scrapes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from newsgroups_classifier.local_config import local_service_env, shipped_bentoml_config
from support.processes import GiveUp, free_port, poll_until, stop_process, tail

SERVICE = "newsgroups_classifier.service:NewsgroupsClassifier"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample on the service's /metrics (Prometheus text format), by name and sorted labels."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, lbls), v in samples.items() if n == name and labels.items() <= dict(lbls).items())


@dataclass
class Server:
    """A `bentoml serve` subprocess on 127.0.0.1 with its own BentoML home and a log file for stdout."""

    home: Path
    port: int
    log_path: Path
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self, timeout: float = 20) -> int:
        return stop_process(self.process, timeout)


def start_server(
    models_home: Path,
    workdir: Path,
    otlp_endpoint: str | None = None,
    protocol: str | None = None,
    sample_rate: float | None = None,
    env: dict[str, str] | None = None,
    stdout_path: Path | None = None,
    cri_log: Path | None = None,
    timeout: float = 90,
    wrapper: Sequence[str] = (),
    bentoml_config: dict | None = None,
) -> Server:
    """Start the service with the shipped configuration (only where spans go, and how many, changed;
    `env` on top; `bentoml_config` instead of the shipped BentoML configuration).

    Each server gets its own BentoML home (BentoML wipes its metrics folder at start), sharing the
    trained models of `models_home`. `wrapper` goes before the command.
    """
    home = workdir / f"home-{free_port()}"
    home.mkdir(parents=True)
    (home / "models").symlink_to(models_home / "models")
    config_path = home / "bentoml.yaml"
    config_path.write_text(yaml.safe_dump(bentoml_config or shipped_bentoml_config()))
    port = free_port()
    log_path = stdout_path or home / "stdout.log"
    full_env = {
        **os.environ,
        **local_service_env(otlp_endpoint, protocol, sample_rate),
        "BENTOML_HOME": str(home),
        "BENTOML_CONFIG": str(config_path),
        "BENTOML_DO_NOT_TRACK": "true",
        **(env or {}),
    }
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    command = [*wrapper, bentoml, "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    if cri_log:  # as a container runtime would write it, for the collector to tail
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=home,
            start_new_session=True,
        )
        threading.Thread(target=pump_cri, args=(process.stdout, log_path, cri_log), daemon=True).start()
    else:
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=home, start_new_session=True
            )
    server = Server(home=home, port=port, log_path=log_path, process=process, env=full_env)
    workers = int(full_env["WORKERS"])

    def all_workers_up() -> bool:
        # /readyz answers once one worker is up; a test starts when all are (until then, a starting
        # worker's plain-text lines could land inside another's long JSON line on a pipe).
        initialized = [line for line in server.log_lines() if "Service " in line and " initialized" in line]
        return workers == 1 or len(initialized) >= workers

    def ready() -> bool:
        if process.poll() is not None:
            raise GiveUp(f"bentoml serve exited with {process.returncode}:\n{tail(log_path)}")
        return requests.get(f"{server.url}/readyz", timeout=2).status_code == 200 and all_workers_up()

    try:
        poll_until(ready, timeout=timeout, what="the service to be ready")
    except AssertionError as exc:
        server.stop()
        raise AssertionError(f"{exc}\n--- service log ---\n{tail(log_path)}") from None
    return server


def pump_cri(stream, raw_path: Path, cri_path: Path) -> None:
    """Copy a process's stdout to a plain log and to a CRI log (`<time> stdout F <line>`), line by line."""
    with open(raw_path, "ab", buffering=0) as raw, open(cri_path, "ab", buffering=0) as cri:
        for line in stream:
            raw.write(line)
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
            cri.write(stamp + b" stdout F " + line)


def model_dirs(home: Path) -> list[Path]:
    """The versions of the classifier in a BentoML home's model store."""
    return sorted(path for path in (home / "models" / "newsgroups_classifier").iterdir() if path.is_dir())


def train_cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the training command, as `make train` does, with its own BentoML home."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "newsgroups_classifier.training", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"training failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
