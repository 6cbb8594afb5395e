"""helm-config/<release>/values.yaml: every key is one its chart reads, and `make cluster-up` installs each
release from the pinned chart version with its own values file."""

from __future__ import annotations

import copy
import tarfile

import pytest
import yaml

from support.charts import Release, cluster_releases
from support.deploy_files import charts_env
from support.paths import REPO

# Key paths below which a values file may hold keys the chart's values.yaml does not list, and why. Below a
# default of {}, [] or null everything is free-form anyway; a Kubernetes `resources` map is always free-form.
FREE_FORM = {
    "grafana": {
        ("grafana.ini",): "rendered as grafana.ini sections and keys, whatever they are",
    },
    "loki": {
        (
            "loki",
            "storage",
            "bucketNames",
        ): "read by the chart's templates but only commented out in its values.yaml",
        ("loki", "limits_config"): "copied verbatim into Loki's limits_config",
    },
    "tempo": {
        (
            "tempo",
            "storage",
            "trace",
            "s3",
        ): "passed through to Tempo's storage config (commented out in values.yaml)",
    },
    "prometheus": {
        ("serverFiles",): "each key is a file of the server's ConfigMap: our rule files are named as we like",
        ("alertmanager", "config"): "Alertmanager's own configuration, written as it is to alertmanager.yml",
    },
    "metrics-server": {},
    "promtail": {},
    "minio": {},
    "opentelemetry-collector": {
        ("config",): "the collector's own configuration, merged by the chart into its defaults",
        ("service", "enabled"): "read by the chart's templates but only commented out in its values.yaml",
    },
}


# Kubernetes objects a chart copies into its pods as they are.
KUBERNETES_FIELDS = {"resources", "securityContext", "containerSecurityContext", "podSecurityContext"}


def is_free_form(release: str, path: tuple[str, ...]) -> bool:
    return path[-1] in KUBERNETES_FIELDS or any(
        path[: len(prefix)] == prefix for prefix in FREE_FORM[release]
    )


def defaults_with_subcharts(release: Release) -> dict:
    """The chart's defaults, with each subchart's own (from the packaged chart) under the subchart's key."""
    defaults = release.defaults
    with tarfile.open(release.packaged_chart) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if len(parts) == 4 and parts[1] == "charts" and parts[3] == "values.yaml":
                subchart = yaml.safe_load(archive.extractfile(member).read()) or {}
                defaults[parts[2]] = {**subchart, **(defaults.get(parts[2]) or {})}
    return defaults


def unknown_keys(release: str, values: dict, defaults: dict, path: tuple[str, ...] = ()) -> list[str]:
    problems = []
    for key, value in values.items():
        here = (*path, key)
        if is_free_form(release, here):
            continue
        if key not in defaults:
            problems.append(f"{'.'.join(here)}: not a key of the chart")
            continue
        default = defaults[key]
        if isinstance(default, dict) and default:
            if isinstance(value, dict):
                problems += unknown_keys(release, value, default, here)
            elif value is not None:
                problems.append(f"{'.'.join(here)}: the chart expects a map")
        elif default is not None and not isinstance(default, dict | list) and isinstance(value, dict | list):
            problems.append(f"{'.'.join(here)}: the chart expects a {type(default).__name__}")
    return problems


@pytest.mark.parametrize("name", sorted(FREE_FORM))
def test_every_values_key_exists_in_the_chart_defaults(releases, name):
    release = releases[name]
    problems = unknown_keys(name, release.values, defaults_with_subcharts(release))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "name, path",
    [
        ("loki", ("singleBinary", "replica")),
        ("tempo", ("tempo", "metricsGenerator", "enable")),
        ("minio", ("persistance",)),
        ("prometheus", ("alertmanager", "replica")),
        ("grafana", ("datasource",)),
        ("opentelemetry-collector", ("preset",)),
        ("metrics-server", ("tls", "kind")),
    ],
)
def test_a_mistyped_key_is_reported(releases, name, path):
    values = copy.deepcopy(releases[name].values)
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 1
    assert unknown_keys(name, values, defaults_with_subcharts(releases[name])) == [
        f"{'.'.join(path)}: not a key of the chart"
    ]


def test_free_form_exceptions_are_still_used(releases):
    """An exception that no values file needs any more is removed, not left to hide typos."""
    for name, paths in FREE_FORM.items():
        values = releases[name].values
        for path in paths:
            node = values
            for key in path:
                assert isinstance(node, dict) and key in node, (
                    f"{name}: {path} is not set: drop the exception"
                )
                node = node[key]


CHART_VERSION_KEYS = {
    "grafana": "GRAFANA_CHART_VERSION",
    "loki": "LOKI_CHART_VERSION",
    "tempo": "TEMPO_CHART_VERSION",
    "promtail": "PROMTAIL_CHART_VERSION",
    "prometheus": "PROMETHEUS_CHART_VERSION",
    "minio": "MINIO_CHART_VERSION",
    "opentelemetry-collector": "OPENTELEMETRY_COLLECTOR_CHART_VERSION",
    "metrics-server": "METRICS_SERVER_CHART_VERSION",
}


@pytest.mark.parametrize("name", sorted(CHART_VERSION_KEYS))
def test_cluster_up_installs_the_pinned_chart_with_its_values(releases, name):
    release: Release = releases[name]
    env = charts_env()
    assert release.version == env[CHART_VERSION_KEYS[name]]
    assert release.values_path.relative_to(release.values_path.parents[1]).as_posix() == f"{name}/values.yaml"
    chart = yaml.safe_load(release.chart_file("Chart.yaml"))
    assert (chart["name"], chart["version"]) == (release.chart, release.version)
    repos = {env[k]: k.removesuffix("_REPO_NAME") for k in env if k.endswith("_REPO_NAME")}
    assert release.repo in repos, f"{release.repo} is not a repository of charts.env"


def test_prometheus_is_the_version_the_e2e_stack_builds(releases):
    chart = yaml.safe_load(releases["prometheus"].chart_file("Chart.yaml"))
    assert chart["appVersion"].lstrip("v") == charts_env()["PROMETHEUS_VERSION"]


def test_the_collector_image_is_pinned_to_the_release_the_e2e_stack_builds(releases):
    image = releases["opentelemetry-collector"].values["image"]
    builder = yaml.safe_load((REPO / "tests/e2e/stack/otelcol/builder.yaml").read_text())
    assert image["tag"] == builder["dist"]["version"]
    assert image["repository"].endswith("/opentelemetry-collector-k8s")


def test_observability_stack_shares_one_namespace():
    assert len({release.namespace for release in cluster_releases().values()}) == 1
