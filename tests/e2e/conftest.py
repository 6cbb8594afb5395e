"""The whole stack, started once for the end-to-end suite, and torn down by its last test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import stack as st

from helpers import Server, free_port, start_server
from newsgroups_classifier.data import load_split
from newsgroups_classifier.local_config import shipped_bentoml_config
from otlp_receiver import OtlpReceiver


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@dataclass
class Stack:
    minio: st.Program
    loki: st.Program
    traces: OtlpReceiver  # in Tempo's place: Tempo 2.10.8 cannot be built here (tests/e2e/stack/README.md)
    prometheus: st.Program
    promtail: st.Program
    service: Server
    s3: st.S3
    buckets: list[str]
    workdir: Path
    started: list = field(default_factory=list)
    extra_services: list[Server] = field(default_factory=list)

    def processes(self) -> list:
        return [s.process for s in (self.service, *self.extra_services)] + [p.process for p in self.started]

    def stop(self) -> None:
        for service in (self.service, *self.extra_services):
            service.stop()
        for program in reversed(self.started):
            program.stop()
        self.traces.stop()


@pytest.fixture(scope="session")
def stack(models_home, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    started: list = []
    service = traces = None
    try:
        minio, s3, buckets = st.minio(workdir)
        started.append(minio.start())
        st.create_buckets(s3, buckets)
        loki = st.loki(workdir, s3)
        started.append(loki.start(timeout=180))
        traces = OtlpReceiver().start()
        # The shipped ConfigMap's OTLP endpoint (Tempo's gRPC receiver), rewritten to loopback.
        endpoint = shipped_bentoml_config()["services"]["tracing"]["otlp"]["endpoint"]
        pod_log = workdir / "pods" / f"{st.NAMESPACE}_{st.POD}" / st.APP / "0.log"
        pod_log.parent.mkdir(parents=True)
        service = start_server(
            models_home,
            workdir,
            otlp_endpoint=st.local(endpoint, traces.grpc_port),
            cri_log=pod_log,
            env={"POD_NAME": st.POD, "POD_NAMESPACE": st.NAMESPACE},  # the downward API in the cluster
        )
        prometheus = st.prometheus(workdir, free_port(), service.port)
        started.append(prometheus.start())
        promtail = st.promtail(workdir, loki.port, workdir / "pods")
        started.append(promtail.start())
    except BaseException:
        if service:
            service.stop()
        if traces:
            traces.stop()
        for program in reversed(started):
            program.stop()
        raise
    running = Stack(minio, loki, traces, prometheus, promtail, service, s3, buckets, workdir, started)
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
