"""What the deployment checks read: the shipped files, the chart defaults, `make -n` commands, and the
service's exposition."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from helpers import REPO, SHARED

# The Kubernetes version the manifests are checked against: API schemas and Pod Security policy version.
KUBERNETES_VERSION = "1.35"
MANIFESTS = REPO / "manifests"
HELM_CONFIG = REPO / "helm-config"
DASHBOARDS = REPO / "dashboards"
# A W3C traceparent with the sampled flag: its trace id must show up in the logs and the exemplars.
KNOWN_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{KNOWN_TRACE_ID}-00f067aa0ba902b7-01"


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.glob("*.yaml")) + sorted(MANIFESTS.glob("operator/*.yaml"))


def manifest_documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in manifest_files() for doc in yaml_documents(path)]


def find_manifest(kind: str, name: str | None = None) -> dict:
    found = [
        doc
        for _, doc in manifest_documents()
        if doc["kind"] == kind and name in (None, doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} in manifests/, found {len(found)}"
    return found[0]


def charts_env() -> dict[str, str]:
    lines = (line.partition("=") for line in (HELM_CONFIG / "charts.env").read_text().splitlines())
    return {key: value for key, sep, value in lines if sep and not key.startswith("#")}


def make_dry_run(*targets: str, **variables: str) -> list[list[str]]:
    """The commands `make -n TARGET...` would run, each split into words."""
    args = ["make", "--no-print-directory", "-n", *targets, *(f"{k}={v}" for k, v in variables.items())]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout
    commands = []
    for line in out.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        while "&&" in words:  # a chain of commands on one line
            commands.append(words[: words.index("&&")])
            words = words[words.index("&&") + 1 :]
        commands.append(words)
    return [words for words in commands if words]


@dataclass(frozen=True)
class Release:
    """A Helm release as `make cluster-up` installs it."""

    name: str
    repo: str
    chart: str
    version: str
    namespace: str
    values_path: Path

    @property
    def values(self) -> dict:
        return yaml.safe_load(self.values_path.read_text())

    @property
    def chart_dir(self) -> Path:
        return SHARED / "charts" / self.chart / self.version

    @property
    def defaults(self) -> dict:
        return yaml.safe_load((self.chart_dir / "values.yaml").read_text())

    @property
    def packaged_chart(self) -> Path:
        """The pinned chart packaged with its dependencies: what `helm install` gets from the repository."""
        return self.chart_dir / f"{self.chart}-{self.version}.tgz"

    def service_host(self, service: str | None = None) -> str:
        return f"{service or self.name}.{self.namespace}.svc.cluster.local"


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def cluster_releases() -> dict[str, Release]:
    releases = {}
    for words in make_dry_run("cluster-up"):
        if words[:3] == ["helm", "upgrade", "--install"]:
            repo, chart = words[4].split("/")
            releases[words[3]] = Release(
                words[3],
                repo,
                chart,
                option(words, "--version"),
                option(words, "--namespace"),
                REPO / option(words, "--values"),
            )
    return releases


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def prometheus_rule_files() -> dict[str, dict]:
    """The rule files as the Prometheus chart writes them (serverFiles), by file name."""
    server_files = yaml.safe_load((HELM_CONFIG / "prometheus" / "values.yaml").read_text())["serverFiles"]
    return {name: content for name, content in server_files.items() if name.endswith("_rules.yml")}


def rules() -> list[dict]:
    return [
        rule for content in prometheus_rule_files().values() for g in content["groups"] for rule in g["rules"]
    ]


def write_rule_files(directory: Path) -> list[Path]:
    paths = []
    for name, content in prometheus_rule_files().items():
        path = directory / name
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        paths.append(path)
    return paths


# --- tools -------------------------------------------------------------------------------------------


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=300, **kwargs
    )


def render(release: Release, helm: Path, *extra: str) -> list[dict]:
    """The objects `make cluster-up` installs for `release`: helm's rendering of the packaged chart
    with the release's name, namespace and values (`extra`: more helm options, e.g. --api-versions)."""
    rendered = run(
        [
            helm,
            "template",
            release.name,
            release.packaged_chart,
            "--namespace",
            release.namespace,
            "--values",
            release.values_path,
            "--kube-version",
            KUBERNETES_VERSION,
            *extra,
        ]
    )
    assert rendered.returncode == 0, f"helm template {release.name} failed:\n{rendered.stderr}"
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


# --- the running service -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """What the service exposed after a little traffic: /metrics in OpenMetrics, and its stdout lines."""

    openmetrics: str
    log_lines: list[str]
    model_version: str


TEXTS = [
    "The pitcher threw a no-hitter and the Yankees won the series.",
    "My engine overheats and the radiator leaks coolant on the highway.",
    "The goalie stopped every shot in overtime of the playoff game.",
    "I ride my motorcycle with a full face helmet and leather jacket.",
    "zxqv wkrp plugh",  # no known word: an empty input for the model
]


def exposed_series(openmetrics: str) -> dict[str, set[frozenset]]:
    """Sample name -> the label-name sets it is exposed with."""
    series: dict[str, set[frozenset]] = {}
    for name, labels in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*?)\})? ", openmetrics, re.M):
        series.setdefault(name, set()).add(frozenset(re.findall(r'([a-zA-Z_]\w*)="', labels or "")))
    return series


# Service names the charts give these releases: the release name (it contains the chart's name), and
# `<release>-server` for the Prometheus server.
SERVICES = {
    "tempo": "tempo",
    "loki": "loki",
    "prometheus": "prometheus-server",
    "grafana": "grafana",
    "minio": "minio",
}


def merged(release: Release) -> dict:
    """The values Helm renders with: the chart's defaults overridden by the values file (null deletes)."""

    def merge(default, override):
        if isinstance(default, dict) and isinstance(override, dict):
            result = dict(default)
            for key, value in override.items():
                if value is None:
                    result.pop(key, None)
                else:
                    result[key] = merge(default.get(key), value)
            return result
        return override

    return merge(release.defaults, release.values)


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname, parts.port or {"http": 80, "https": 443}[parts.scheme]


def datasources(releases) -> dict[str, dict]:
    provisioned = merged(releases["grafana"])["datasources"]["datasources.yaml"]["datasources"]
    return {source["uid"]: source for source in provisioned}


def promtail_labels(releases) -> set[str]:
    """Labels on Promtail's streams: the chart's relabelings plus our labels stage."""
    config = merged(releases["promtail"])["config"]
    snippets = config["snippets"]
    relabeled = set(re.findall(r"target_label: (\w+)", snippets["scrapeConfigs"]))
    relabeled |= {rule["target_label"] for rule in snippets["common"]}
    staged = {
        label
        for stage in snippets["pipelineStages"]
        for inner in stage.get("match", {}).get("stages", [])
        for label in inner.get("labels", {})
    }
    return {label for label in relabeled | staged if not label.startswith("__")}


def created_secrets() -> set[tuple[str, str, frozenset]]:
    """(namespace, name, keys) of every Secret `make cluster-up` creates."""
    secrets = set()
    for words in make_dry_run("cluster-up"):
        for i in range(len(words) - 3):
            if words[i : i + 3] == ["create", "secret", "generic"]:
                keys = frozenset(
                    w.split("=", 1)[1].split("=")[0] for w in words if w.startswith("--from-literal=")
                )
                secrets.add((words[words.index("-n") + 1], words[i + 3], keys))
    return secrets
