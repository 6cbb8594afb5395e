"""The observability stack on one machine: real binaries, configured from the Helm values we ship.

Each program's configuration is derived from helm-config/<component>/values.yaml the way its chart
renders it; only hosts, ports and paths are rewritten to loopback and temporary folders.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from helpers import REPO, GiveUp, free_port, poll_until, tail

BUILD = REPO / "tests" / "e2e" / "stack" / "build.sh"
HELM_CONFIG = REPO / "helm-config"
# Labels the charts' Kubernetes discovery gives the service's pods and log streams.
POD = "newsgroups-classifier-0"
NAMESPACE = "newsgroups"
APP = "newsgroups-classifier"


def values(component: str) -> dict:
    return yaml.safe_load((HELM_CONFIG / component / "values.yaml").read_text())


def binary(name: str) -> Path:
    path = Path(
        subprocess.run(
            ["bash", str(BUILD), "--print-path", name], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert path.is_file(), f"{name} is not built at {path}: run `make stack-bin`"
    return path


@dataclass
class Program:
    """One backend process with its log file; `start` fails with the log tail when it won't get ready."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready_url(self) -> str:
        return self.url + self.ready_path

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 120) -> Program:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        try:
            poll_until(self._ready, timeout=timeout, interval=0.5, what=f"{self.name} to be ready")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- {self.name} log ({self.log}) ---\n{tail(self.log)}") from None
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise GiveUp(f"{self.name} exited with {self.process.returncode}:\n{tail(self.log)}")
        return requests.get(self.ready_url, timeout=2).status_code == 200

    def stop(self, timeout: float = 20) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def write_config(self, config: dict, name: str = "config.yaml") -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@dataclass(frozen=True)
class S3:
    endpoint: str  # host:port
    access_key: str
    secret_key: str


def local(url_or_address: str, port: int) -> str:
    """Rewrite a cluster address (http://svc.ns.svc.cluster.local:80/path or host:port) to loopback."""
    scheme, sep, rest = url_or_address.partition("://")
    if not sep:
        scheme, rest = "", url_or_address
    path = rest[rest.index("/") :] if "/" in rest else ""
    return f"{scheme}{sep}127.0.0.1:{port}{path}"


def loopback_server(port: int, grpc_port: int) -> dict:
    """The `server` block of Grafana's Go services (Loki, Tempo), listening on loopback only."""
    return {
        "http_listen_address": "127.0.0.1",
        "http_listen_port": port,
        "grpc_listen_address": "127.0.0.1",
        "grpc_listen_port": grpc_port,
        "log_level": "warn",
    }


# --- MinIO -------------------------------------------------------------------------------------------


def minio(workdir: Path) -> tuple[Program, S3, list[str]]:
    """MinIO with fresh credentials (the cluster takes them from a Secret) and the chart's buckets."""
    port, console = free_port(), free_port()
    s3 = S3(f"127.0.0.1:{port}", "e2e" + secrets.token_hex(4), secrets.token_hex(16))
    program = Program(
        "minio",
        [
            str(binary("minio")),
            "server",
            str(workdir / "minio-data"),
            "--address",
            s3.endpoint,
            "--console-address",
            f"127.0.0.1:{console}",
            "--quiet",
        ],
        port,
        "/minio/health/ready",
        workdir / "minio",
        env={"MINIO_ROOT_USER": s3.access_key, "MINIO_ROOT_PASSWORD": s3.secret_key, "MINIO_BROWSER": "off"},
    )
    return program, s3, [bucket["name"] for bucket in values("minio")["buckets"]]


def create_buckets(s3: S3, buckets: list[str]) -> None:
    """What the MinIO chart's post-install job does with `mc mb`."""
    from minio import Minio

    client = Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False)
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)


def s3_env(s3: S3) -> dict[str, str]:
    """The Secret's keys as the Loki and Tempo values pass them (extraEnv, expanded by -config.expand-env)."""
    return {"S3_ACCESS_KEY_ID": s3.access_key, "S3_SECRET_ACCESS_KEY": s3.secret_key}


# --- Loki --------------------------------------------------------------------------------------------


def loki(workdir: Path, s3: S3) -> Program:
    chart = values("loki")
    config = chart["loki"]
    storage = config["storage"]
    s3_values = storage["s3"]
    port, grpc_port = free_port(), free_port()
    s3_block = {
        "endpoint": s3.endpoint,
        "region": s3_values["region"],
        "access_key_id": s3_values["accessKeyId"],
        "secret_access_key": s3_values["secretAccessKey"],
        "s3forcepathstyle": s3_values["s3ForcePathStyle"],
        "insecure": s3_values["insecure"],
    }
    data = workdir / "loki"
    rendered = {
        "auth_enabled": config["auth_enabled"],
        "server": loopback_server(port, grpc_port),
        "common": {
            "path_prefix": str(data),
            "replication_factor": config["commonConfig"]["replication_factor"],
            "instance_addr": "127.0.0.1",
            "ring": {"kvstore": {"store": "inmemory"}, "instance_addr": "127.0.0.1"},
            "storage": {"s3": {**s3_block, "bucketnames": storage["bucketNames"]["chunks"]}},
        },
        "schema_config": config["schemaConfig"],
        "limits_config": config["limits_config"],
        "compactor": {**config["compactor"], "working_directory": str(data / "compactor")},
        "ruler": {
            "storage": {"type": "s3", "s3": {**s3_block, "bucketnames": storage["bucketNames"]["ruler"]}}
        },
        "memberlist": {"bind_addr": ["127.0.0.1"], "bind_port": free_port()},
        "frontend": {"address": "127.0.0.1"},
    }
    program = Program("loki", [], port, "/ready", data, env=s3_env(s3))
    path = program.write_config(rendered)
    program.argv = [str(binary("loki")), f"-config.file={path}", *chart["singleBinary"]["extraArgs"]]
    return program


# --- Promtail ------------------------------------------------------------------------------------------


def promtail(workdir: Path, loki_port: int, pod_logs: Path) -> Program:
    """Tails <pod_logs>/<namespace>_<pod>/<container>/*.log, the layout of /var/log/pods on a node."""
    chart = values("promtail")["config"]
    port = free_port()
    rendered = {
        "server": {
            "http_listen_address": "127.0.0.1",
            "http_listen_port": port,
            "grpc_listen_port": 0,
            "log_level": "warn",
        },
        "positions": {"filename": str(workdir / "promtail" / "positions.yaml")},
        "clients": [{**client, "url": local(client["url"], loki_port)} for client in chart["clients"]],
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "pipeline_stages": chart["snippets"]["pipelineStages"],
                # The labels the chart's relabelling gives a pod's log stream.
                "static_configs": [
                    {
                        "targets": ["localhost"],
                        "labels": {
                            "__path__": str(pod_logs / "*" / APP / "*.log"),
                            "namespace": NAMESPACE,
                            "pod": POD,
                            "container": APP,
                            "app": APP,
                            "job": f"{NAMESPACE}/{APP}",
                        },
                    }
                ],
            }
        ],
    }
    program = Program("promtail", [], port, "/ready", workdir / "promtail")
    path = program.write_config(rendered)
    program.argv = [str(binary("promtail")), f"-config.file={path}"]
    return program


# --- Prometheus --------------------------------------------------------------------------------------


def prometheus(workdir: Path, port: int, service_port: int) -> Program:
    server = values("prometheus")["server"]
    files = values("prometheus")["serverFiles"]
    data = workdir / "prometheus"
    program = Program("prometheus", [], port, "/-/ready", data)
    rule_files = [
        str(program.write_config(files[name], name)) for name in ("alerting_rules.yml", "recording_rules.yml")
    ]
    rendered = {
        "global": server["global"],
        "rule_files": rule_files,
        "storage": {"exemplars": server["exemplars"]},
        "scrape_configs": [
            {
                # What the chart's kubernetes-pods job makes of the service's pod and its annotations.
                "job_name": "kubernetes-pods",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{service_port}"],
                        "labels": {
                            "namespace": NAMESPACE,
                            "pod": POD,
                            "app_kubernetes_io_name": APP,
                        },
                    }
                ],
            }
        ],
    }
    path = program.write_config(rendered, "prometheus.yml")
    program.argv = [
        str(binary("prometheus")),
        f"--config.file={path}",
        f"--storage.tsdb.path={data / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.retention.time={server['retention']}",
        *[f"--{flag}" for flag in server["extraFlags"]],
    ]
    return program
