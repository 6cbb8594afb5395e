"""The stack, started once for the end-to-end suite, and torn down by its last test: the real OpenTelemetry
Collector and Prometheus, the service writing its stdout as a container log file, and real OTLP receivers
at Loki's and Tempo's addresses (Loki and Tempo are AGPL-3.0: never run here)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from newsgroups_classifier.data import load_split
from newsgroups_classifier.local_config import shipped_service_env
from support import stack as st
from support.loki_contract import Entry, ingested
from support.otlp_receiver import OtlpReceiver
from support.processes import free_port
from support.service_process import Server, start_server


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@dataclass
class Stack:
    tempo: OtlpReceiver  # at Tempo's OTLP gRPC address: the collector's trace export (contract)
    loki: OtlpReceiver  # at Loki's /otlp: the collector's log export (contract)
    workdir: Path
    pod_logs: Path
    collector: st.Program | None = None
    prometheus: st.Program | None = None
    service: Server | None = None
    started: list = field(default_factory=list)
    extra_services: list[Server] = field(default_factory=list)

    def loki_entries(self) -> list[Entry]:
        """What Loki would hold: every exported record, ingested as Loki's OTLP endpoint documents."""
        index = st.loki_index_attributes()
        return [ingested(record, index) for record in self.loki.log_records()]

    def pod_log(self, pod: str) -> Path:
        """A container log file where the kubelet puts it: <namespace>_<pod>_<uid>/<container>/0.log."""
        path = self.pod_logs / f"{st.NAMESPACE}_{pod}_{uuid.uuid4()}" / st.APP / "0.log"
        path.parent.mkdir(parents=True)
        return path

    def services(self) -> list[Server]:
        return [s for s in (self.service, *self.extra_services) if s]

    def processes(self) -> list:
        return [s.process for s in self.services()] + [p.process for p in self.started]

    def stop(self) -> None:
        for service in self.services():
            service.stop()
        for program in reversed(self.started):
            program.stop()
        self.tempo.stop()
        self.loki.stop()


@pytest.fixture(scope="session")
def otelcol() -> Path:
    """The collector tests/e2e/stack/build.sh builds (`make stack-bin`)."""
    return st.binary("otelcol")


@pytest.fixture(scope="session")
def stack(models_home, helm, otelcol, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    pod_logs = workdir / "pods"
    pod_logs.mkdir()
    tempo, loki = OtlpReceiver().start(), OtlpReceiver(http_prefix="/otlp").start()
    running = Stack(tempo, loki, workdir, pod_logs)
    try:
        prometheus_port = free_port()
        running.collector = st.collector(workdir, helm, pod_logs, tempo, loki, prometheus_port)
        # First: the file_log receiver reads files that appear after its start from their beginning.
        running.started.append(running.collector.start())
        # The shipped ConfigMap's OTLP endpoint (the collector's Service), rewritten to loopback.
        endpoint = shipped_service_env()["OTEL_EXPORTER_OTLP_ENDPOINT"]
        running.service = start_server(
            models_home,
            workdir,
            otlp_endpoint=st.local(endpoint, running.collector.ports["otlp_grpc"]),
            cri_log=running.pod_log(st.POD),
            env={"POD_NAME": st.POD, "POD_NAMESPACE": st.NAMESPACE},  # the downward API in the cluster
        )
        running.prometheus = st.prometheus(workdir, prometheus_port, running.service.port)
        running.started.append(running.prometheus.start())
    except BaseException:
        running.stop()
        raise
    yield running
    running.stop()
    for process in running.processes():  # each in its own process group: children included
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)


@pytest.fixture(scope="session")
def documents(data_home) -> dict[str, list[str]]:
    """Real held-out documents by class, through the project's own loader."""
    split = load_split("test", data_home=data_home)
    by_label: dict[str, list[str]] = {}
    for text, label in zip(split.texts, split.labels, strict=True):
        if len(text.split()) > 20:
            by_label.setdefault(label, []).append(text)
    return by_label
