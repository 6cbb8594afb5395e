"""What the deployment checks read: the shipped files, the chart defaults, `make -n` commands, and the
service's exposition."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

from support.charts import (
    KUBERNETES_VERSION,
    Release,
    make_dry_run,
    run,
)
from support.paths import REPO

MANIFESTS = REPO / "manifests"
HELM_CONFIG = REPO / "helm-config"
DASHBOARDS = REPO / "dashboards"
# A W3C traceparent with the sampled flag: its trace id must show up in the logs and the exemplars.
KNOWN_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{KNOWN_TRACE_ID}-00f067aa0ba902b7-01"


SCHEMAS = (
    Path(kubernetes_validate.__file__).parent
    / "kubernetes-json-schema"
    / f"v{KUBERNETES_VERSION}.0-local-strict"
)


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


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def prometheus_rule_files() -> dict[str, dict]:
    """The rule files Prometheus loads (serverFiles' prometheus.yml, rule_files), as the chart writes them
    (serverFiles), by file name."""
    server_files = yaml.safe_load((HELM_CONFIG / "prometheus" / "values.yaml").read_text())["serverFiles"]
    names = [Path(path).name for path in server_files["prometheus.yml"]["rule_files"]]
    return {name: server_files[name] for name in names}


def rules() -> list[dict]:
    return [
        rule for content in prometheus_rule_files().values() for g in content["groups"] for rule in g["rules"]
    ]


def write_rule_files(directory: Path, annotations: bool = True) -> list[Path]:
    """The rule files, written into `directory`. Without annotations for promtool's unit tests, which would
    compare their rendered text exactly: that would only repeat them (`promtool check rules` checks their
    templates)."""
    paths = []
    for name, content in prometheus_rule_files().items():
        content = copy.deepcopy(content)
        if not annotations:
            for group in content["groups"]:
                for rule in group["rules"]:
                    rule.pop("annotations", None)
        path = directory / name
        path.write_text(yaml.safe_dump(content, sort_keys=False))
        paths.append(path)
    return paths


# --- checks every Kubernetes object gets: API schemas, kube-score, Pod Security ------------------------


@cache
def schema_registry() -> Registry:
    definitions = json.loads((SCHEMAS / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def schema_errors(document: dict) -> list[str]:
    """Every violation of the pinned Kubernetes version's OpenAPI schema; unknown fields are errors."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", document["apiVersion"])
    path = SCHEMAS / f"{document['kind'].lower()}-{group_version}.json"
    if not path.is_file():
        return [
            f"no schema for {document['apiVersion']} {document['kind']} in Kubernetes {KUBERNETES_VERSION}"
        ]
    validator = jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=schema_registry())
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(document)
    ]


def is_builtin(document: dict) -> bool:
    group = document["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


# Optional kube-score tests run on every object we ship, the manifests and the charts' renderings alike.
KUBE_SCORE_OPTIONAL = [
    "container-seccomp-profile",
    "container-ports-check",
    "container-memory-requests-equal-limits",
]


def kube_score_findings(kube_score: Path, files: list[Path], ignored: set[str]) -> list[str]:
    """kube-score's findings (every line but OK and SKIPPED) on `files`, less the `ignored` tests."""
    result = run(
        [
            kube_score,
            "score",
            "--output-format",
            "ci",
            "--kubernetes-version",
            f"v{KUBERNETES_VERSION}",
            *(f"--ignore-test={test}" for test in sorted(ignored)),
            *(f"--enable-optional-test={test}" for test in KUBE_SCORE_OPTIONAL),
            *files,
        ]
    )
    assert result.stdout.strip(), result.stderr
    return [line for line in result.stdout.splitlines() if not line.startswith(("[OK]", "[SKIPPED]"))]


# --- the running service -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """What the service exposed after a little traffic: /metrics (text format) and its stdout lines."""

    metrics: str
    log_lines: list[str]
    model_version: str


TEXTS = [
    "The pitcher threw a no-hitter and the Yankees won the series.",
    "My engine overheats and the radiator leaks coolant on the highway.",
    "The goalie stopped every shot in overtime of the playoff game.",
    "I ride my motorcycle with a full face helmet and leather jacket.",
    "zxqv wkrp plugh",  # no known word: an empty input for the model
]


def exposed_series(exposition: str) -> dict[str, set[frozenset]]:
    """Sample name -> the label-name sets it is exposed with."""
    series: dict[str, set[frozenset]] = {}
    for name, labels in re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*?)\})? ", exposition, re.M):
        series.setdefault(name, set()).add(frozenset(re.findall(r'([a-zA-Z_]\w*)="', labels or "")))
    return series


# Service names the charts give these releases: the release name (it contains the chart's name), and
# `<release>-server` for the Prometheus server.
SERVICES = {
    "opentelemetry-collector": "opentelemetry-collector",
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
    """Labels on Promtail's streams: the chart's relabelings, `filename` (every file target has it), the
    cri stage's `stream` and our labels stage, less what the labeldrop stage drops."""
    config = merged(releases["promtail"])["config"]
    snippets = config["snippets"]
    stages = snippets["pipelineStages"]
    relabeled = set(re.findall(r"target_label: (\w+)", snippets["scrapeConfigs"]))
    if not snippets["addScrapeJobLabel"]:
        relabeled.discard("scrape_job")  # the template adds it only if asked
    relabeled |= {rule["target_label"] for rule in snippets["common"] + snippets["extraRelabelConfigs"]}
    staged = {"filename"} | ({"stream"} if any("cri" in stage for stage in stages) else set())
    staged |= {
        label
        for stage in stages
        for inner in stage.get("match", {}).get("stages", [])
        for label in inner.get("labels", {})
    }
    dropped = {label for stage in stages for label in stage.get("labeldrop", [])}
    return {label for label in relabeled | staged if not label.startswith("__")} - dropped


def loki_label(attribute: str) -> str:
    """The label name Loki's OTLP endpoint gives a resource attribute (dots and dashes to underscores)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def otlp_index_attributes(releases) -> list[str]:
    """The resource attributes Loki's OTLP endpoint turns into labels (only these: ignore_defaults)."""
    otlp = merged(releases["loki"])["loki"]["limits_config"]["otlp_config"]["resource_attributes"]
    assert otlp["ignore_defaults"] is True, "Loki's default OTLP labels would differ from Promtail's"
    return [
        a for rule in otlp["attributes_config"] if rule["action"] == "index_label" for a in rule["attributes"]
    ]


def collector_labels(releases) -> set[str]:
    """Labels on the collector's OTLP streams, as Loki names them."""
    return {loki_label(attribute) for attribute in otlp_index_attributes(releases)}


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
