"""What `make cluster-up` installs: every pinned chart rendered by the pinned helm with our values, exactly as
installed (with either log agent), and every rendered object through the checks the manifests get: the
Kubernetes API schemas, the Pod Security admission checks, kube-score. Each exception is explained here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from support.charts import KUBERNETES_VERSION, Release, render, run
from support.deploy_files import KUBE_SCORE_OPTIONAL, is_builtin, schema_errors

# Pod Security: every pod is held to the restricted profile, as the service's is, but for these.
# (release, reason as the admission check names it) -> why.
LOG_AGENT_EXCEPTIONS = {
    "restricted volume types": "a log agent reads the pods' log files from the node (hostPath, read-only)",
    "runAsUser=0": "those files are root's (0640): the agent reads them as root, all capabilities dropped",
    "runAsNonRoot != true": "the same: root",
}
POD_SECURITY_EXCEPTIONS = {
    "opentelemetry-collector": LOG_AGENT_EXCEPTIONS,
    "promtail": LOG_AGENT_EXCEPTIONS,
}

# kube-score tests accepted for every chart of the stack, and why.
KUBE_SCORE_STACK_EXCEPTIONS = {
    "container-image-pull-policy": "the charts pin their image tags (IfNotPresent), as the manifests do",
    "container-resources": "no CPU limits on the backends: throttling a telemetry backend loses data; "
    "their CPU and memory requests schedule them",
    "container-memory-requests-equal-limits": "burstable: requests sized for a demo, limits for bursts",
    "container-ephemeral-storage-request-and-limit": "the backends keep their data on volumes; the "
    "charts set no ephemeral storage and a demo's logs are small",
    "pod-networkpolicy": "the observability namespace is reached by the service, Grafana, the agents and "
    "port-forwards; its NetworkPolicies (the charts' are opt-in) are the cluster operator's",
    "pod-probes-identical": "the charts probe one readiness endpoint for both",
    "deployment-replicas": "one replica each: single-binary backends on ReadWriteOnce volumes",
}
# (release, kube-score test) -> why, for one chart only.
KUBE_SCORE_EXCEPTIONS = {
    ("grafana", "container-security-context-user-group-id"): "the image's user, grafana (472)",
    ("grafana", "container-security-context-readonlyrootfilesystem"): "the chart does not support a "
    "read-only root (Grafana writes its plugins and sessions under its home)",
    ("minio", "container-security-context-user-group-id"): "the chart's user (1000), which owns the volume",
    ("minio", "container-security-context-readonlyrootfilesystem"): "MinIO creates its configuration "
    "folder under $HOME at start",
    ("minio", "pod-probes"): "the chart has a liveness probe only",
    ("prometheus", "deployment-strategy"): "Recreate, the chart's: the TSDB volume is ReadWriteOnce",
    ("tempo", "statefulset-has-servicename"): "the chart names its one Service, which is not headless",
    ("opentelemetry-collector", "container-security-context-user-group-id"): "root: it reads the pods' log "
    "files (see the Pod Security exceptions)",
    ("promtail", "container-security-context-user-group-id"): "root, as the collector",
}


@pytest.fixture(scope="module")
def rendered(renderings, helm) -> dict[str, list[dict]]:
    return {name: render(release, helm) for name, release in renderings.items()}


def written(rendered: dict[str, list[dict]], directory: Path) -> dict[str, Path]:
    paths = {}
    for name, documents in rendered.items():
        path = directory / f"{re.sub(r'[^a-z0-9-]+', '-', name)}.yaml"
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        paths[name] = path
    return paths


def release_of(name: str) -> str:
    return name.split(" ")[0]  # "opentelemetry-collector (LOG_AGENT=promtail)" -> its release


def test_every_release_and_variant_renders(releases, renderings, rendered):
    assert {release_of(name) for name in renderings} == set(releases)  # the fixture names them
    assert "opentelemetry-collector (LOG_AGENT=promtail)" in rendered  # the collector without logs
    for name, documents in rendered.items():
        kinds = {doc["kind"] for doc in documents}
        assert kinds & {"Deployment", "StatefulSet", "DaemonSet"}, f"{name} renders no workload: {kinds}"


def test_a_values_file_that_does_not_render_fails(renderings, helm, tmp_path):
    """The bug users hit (before this test: Loki's and Tempo's values) is reported, not hidden."""
    broken = tmp_path / "values.yaml"
    loki = renderings["loki"]
    values = loki.values
    values["read"]["replicas"] = 3  # Monolithic and SimpleScalable replicas at once: the chart refuses
    broken.write_text(yaml.safe_dump(values))
    release = Release(loki.name, loki.repo, loki.chart, loki.version, loki.namespace, broken)
    with pytest.raises(AssertionError, match="helm template loki failed"):
        render(release, helm)


def test_every_rendered_object_matches_the_kubernetes_schema(rendered):
    errors = [
        f"{name}: {doc['kind']}/{doc['metadata']['name']}: {error}"
        for name, documents in rendered.items()
        for doc in documents
        if is_builtin(doc)
        for error in schema_errors(doc)
    ]
    assert not errors, "\n".join(errors)
    custom = {doc["kind"] for documents in rendered.values() for doc in documents if not is_builtin(doc)}
    assert not custom, f"custom resources need their CRDs checked: {custom}"


def denied_reasons(detail: str) -> set[str]:
    """The check names of a Pod Security denial, e.g. 'hostPath volumes (volumes "x"), runAsUser=0 (...)'."""
    return set(re.findall(r"(?:^|\), )([^(]+?) \(", detail))


def test_pods_meet_the_restricted_profile_but_for_the_explained_exceptions(rendered, podsecurity, tmp_path):
    paths = written(rendered, tmp_path)
    unexplained, used = [], set()
    for name, path in paths.items():
        result = run([podsecurity, "-level", "restricted", "-version", f"v{KUBERNETES_VERSION}", path])
        assert result.returncode in (0, 1) and result.stdout, result.stderr
        for line in result.stdout.splitlines():
            if ": DENIED by " not in line:
                continue
            detail = line.split(": DENIED by ", 1)[1].split(": ", 1)[1]
            allowed = POD_SECURITY_EXCEPTIONS.get(release_of(name), {})
            unexplained += [f"{line}\n  -> {reason}" for reason in denied_reasons(detail) - set(allowed)]
            used |= {(release_of(name), reason) for reason in denied_reasons(detail) & set(allowed)}
    assert not unexplained, "\n".join(unexplained)
    stale = {(r, reason) for r, reasons in POD_SECURITY_EXCEPTIONS.items() for reason in reasons} - used
    assert not stale, f"exceptions no rendering needs any more: drop them: {stale}"


def test_the_promtail_variant_of_the_collector_runs_unprivileged(rendered, podsecurity, tmp_path):
    path = written({"collector": rendered["opentelemetry-collector (LOG_AGENT=promtail)"]}, tmp_path)[
        "collector"
    ]
    result = run([podsecurity, "-level", "restricted", "-version", f"v{KUBERNETES_VERSION}", path])
    assert result.returncode == 0 and "allowed by restricted" in result.stdout, result.stdout


def kube_score_results(kube_score: Path, path: Path) -> set[tuple[str, str]]:
    """(object, test id) of every kube-score test that did not pass, optional tests as the manifests'."""
    result = run(
        [
            kube_score,
            "score",
            "--output-format",
            "json",
            "--kubernetes-version",
            f"v{KUBERNETES_VERSION}",
            *(f"--enable-optional-test={test}" for test in KUBE_SCORE_OPTIONAL),
            path,
        ]
    )
    assert result.stdout.strip(), result.stderr
    return {
        (found["object_name"], check["check"]["id"])
        for found in json.loads(result.stdout)
        for check in found["checks"]
        if check["grade"] < 10 and not check["skipped"]
    }


def test_kube_score_finds_nothing_unexplained(rendered, kube_score, tmp_path):
    unexplained, used = [], set()
    for name, path in written(rendered, tmp_path).items():
        for obj, test in kube_score_results(kube_score, path):
            key = (release_of(name), test)
            if test in KUBE_SCORE_STACK_EXCEPTIONS:
                continue
            if key in KUBE_SCORE_EXCEPTIONS:
                used.add(key)
            else:
                unexplained.append(f"{name}: {obj}: {test}")
    assert not unexplained, "\n".join(sorted(unexplained))
    assert not set(KUBE_SCORE_EXCEPTIONS) - used, f"unused exceptions: {set(KUBE_SCORE_EXCEPTIONS) - used}"


def relay_config(rendered: dict[str, list[dict]], name: str) -> dict:
    (configmap,) = [
        doc
        for doc in rendered[name]
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-agent")
    ]
    return yaml.safe_load(configmap["data"]["relay"])


def test_the_collector_pipelines_as_rendered(rendered):
    """The chart's presets write the 0.165 names (file_log, k8s_attributes); with Promtail, no logs
    pipeline. (tests/e2e checks every component against the built collector's.)"""
    default = relay_config(rendered, "opentelemetry-collector")["service"]["pipelines"]
    assert default["logs"]["receivers"] == ["file_log"]
    assert all(pipeline["processors"][0] == "k8s_attributes" for pipeline in default.values())
    without_logs = relay_config(rendered, "opentelemetry-collector (LOG_AGENT=promtail)")["service"][
        "pipelines"
    ]
    assert set(without_logs) == {"traces", "metrics"}
