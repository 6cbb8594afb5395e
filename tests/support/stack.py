"""The permissive part of the observability stack on one machine: the real OpenTelemetry Collector and
Prometheus, configured from the Helm values we ship (the collector's from the chart's rendering by the pinned
helm, Prometheus' as its chart writes it); only hosts, ports and paths are rewritten to loopback and
temporary folders. Loki and Tempo (AGPL-3.0) are never run: real OTLP receivers take their addresses.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from support.charts import cluster_releases, render
from support.deploy_files import prometheus_rule_files
from support.otlp_receiver import OtlpReceiver
from support.paths import REPO
from support.processes import GiveUp, free_port, poll_until, stop_process, tail

BUILD = REPO / "tests" / "e2e" / "stack" / "build.sh"
HELM_CONFIG = REPO / "helm-config"
# Labels the charts' Kubernetes discovery gives the service's pods and log streams.
POD = "newsgroups-classifier-0"
NAMESPACE = "newsgroups"
APP = "newsgroups-classifier"


def values(component: str) -> dict:
    return yaml.safe_load((HELM_CONFIG / component / "values.yaml").read_text())


def loki_index_attributes() -> list[str]:
    """The resource attributes Loki's OTLP endpoint indexes as labels (helm-config/loki/values.yaml)."""
    otlp = values("loki")["loki"]["limits_config"]["otlp_config"]["resource_attributes"]
    return [
        a for rule in otlp["attributes_config"] if rule["action"] == "index_label" for a in rule["attributes"]
    ]


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
    ports: dict[str, int] = field(default_factory=dict)  # more listening ports, by name

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
        return stop_process(self.process, timeout) if self.process else None

    def write_config(self, config: dict, name: str = "config.yaml") -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


def local(url_or_address: str, port: int) -> str:
    """Rewrite a cluster address (http://svc.ns.svc.cluster.local:80/path or host:port) to loopback."""
    scheme, sep, rest = url_or_address.partition("://")
    if not sep:
        scheme, rest = "", url_or_address
    path = rest[rest.index("/") :] if "/" in rest else ""
    return f"{scheme}{sep}127.0.0.1:{port}{path}"


# --- OpenTelemetry Collector -------------------------------------------------------------------------

# What the chart's pod gets from the downward API, here the loopback host's.
COLLECTOR_ENV = {
    "MY_POD_IP": "127.0.0.1",
    "OTEL_K8S_NAMESPACE": "observability",
    "OTEL_K8S_NODE_NAME": "e2e-node",
    "OTEL_K8S_NODE_IP": "127.0.0.1",
    "OTEL_K8S_POD_NAME": "opentelemetry-collector-agent-e2e",
    "OTEL_K8S_POD_IP": "127.0.0.1",
    "K8S_NODE_NAME": "e2e-node",
    "K8S_NODE_IP": "127.0.0.1",
}
# The processor of the shipped configuration that needs a Kubernetes API server (it asks it for each pod's
# metadata), which this stack has none of: left out here, run in the cluster tier (tests/cluster). The
# pod's metadata the labels need comes from the log file's path instead.
NEEDS_API_SERVER = {"k8s_attributes"}


def collector_config(helm: Path, **make_variables: str) -> dict:
    """The collector's configuration as `make cluster-up` installs it: the chart's ConfigMap, rendered."""
    release = cluster_releases(**make_variables)["opentelemetry-collector"]
    (configmap,) = [
        doc
        for doc in render(release, helm)
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-agent")
    ]
    return yaml.safe_load(configmap["data"]["relay"])


def without_api_server(config: dict) -> dict:
    for name in NEEDS_API_SERVER:
        config["processors"].pop(name, None)
        for pipeline in config["service"]["pipelines"].values():
            pipeline["processors"] = [p for p in pipeline["processors"] if p != name]
    return config


def collector(
    workdir: Path, helm: Path, pod_logs: Path, tempo: OtlpReceiver, loki: OtlpReceiver, prometheus_port: int
) -> Program:
    """The collector running the shipped configuration: hosts, ports and the pods' log folder rewritten."""
    config = without_api_server(collector_config(helm))
    health, grpc, http, telemetry = free_port(), free_port(), free_port(), free_port()
    receivers, exporters = config["receivers"], config["exporters"]
    receivers["otlp"]["protocols"]["grpc"]["endpoint"] = f"127.0.0.1:{grpc}"
    receivers["otlp"]["protocols"]["http"]["endpoint"] = f"127.0.0.1:{http}"
    files = receivers["file_log"]
    for key in ("include", "exclude"):
        files[key] = [path.replace("/var/log/pods", str(pod_logs), 1) for path in files[key]]
    config["extensions"]["health_check"]["endpoint"] = f"127.0.0.1:{health}"
    exporters["otlp_grpc/tempo"]["endpoint"] = local(
        exporters["otlp_grpc/tempo"]["endpoint"], tempo.grpc_port
    )
    exporters["otlp_http/loki"]["endpoint"] = local(exporters["otlp_http/loki"]["endpoint"], loki.http_port)
    prometheus = exporters["otlp_http/prometheus"]
    prometheus["metrics_endpoint"] = local(prometheus["metrics_endpoint"], prometheus_port)
    (reader,) = config["service"]["telemetry"]["metrics"]["readers"]
    reader["pull"]["exporter"]["prometheus"].update(host="127.0.0.1", port=telemetry)
    program = Program("otelcol", [], health, "/", workdir / "otelcol", env=COLLECTOR_ENV)
    path = program.write_config(config)
    program.argv = [str(binary("otelcol")), f"--config={path}"]
    program.ports.update(otlp_grpc=grpc, otlp_http=http)
    return program


# --- Prometheus --------------------------------------------------------------------------------------


def prometheus(workdir: Path, port: int, service_port: int) -> Program:
    server = values("prometheus")["server"]
    data = workdir / "prometheus"
    program = Program("prometheus", [], port, "/-/ready", data)
    rule_files = [str(program.write_config(rules, name)) for name, rules in prometheus_rule_files().items()]
    rendered = {
        "global": server["global"],
        "rule_files": rule_files,
        "storage": {"exemplars": server["exemplars"]},
        "otlp": server["otlp"],
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
