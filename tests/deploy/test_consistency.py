"""Names that must agree across files: endpoints, ports, buckets, Secrets, datasource uids, labels, and the
derived-field regex against real log lines of the service."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_files import (
    KNOWN_TRACE_ID,
    SERVICES,
    created_secrets,
    dashboards,
    datasources,
    find_manifest,
    host_port,
    make_dry_run,
    merged,
    promtail_labels,
)


def otlp_exporter() -> dict:
    config = yaml.safe_load(
        find_manifest("ConfigMap", "newsgroups-classifier-bentoml")["data"]["bentoml.yaml"]
    )
    return config["services"]["tracing"]["otlp"]


def test_service_sends_otlp_to_a_tempo_receiver_listening_on_all_interfaces(releases):
    tempo = merged(releases["tempo"])["tempo"]
    exporter = otlp_exporter()
    receiver = tempo["receivers"]["otlp"]["protocols"][exporter["protocol"]]
    assert host_port(exporter["endpoint"]) == (
        releases["tempo"].service_host(),
        host_port(receiver["endpoint"])[1],
    )
    assert host_port(receiver["endpoint"])[0] == "0.0.0.0"
    assert set(tempo["receivers"]) == {"otlp"}, "only OTLP receivers are wanted"


def test_promtail_pushes_to_the_loki_service(releases):
    loki = merged(releases["loki"])
    assert loki["deploymentMode"] == "Monolithic" and not loki["gateway"]["enabled"]
    (client,) = merged(releases["promtail"])["config"]["clients"]
    expected = (releases["loki"].service_host(SERVICES["loki"]), loki["loki"]["server"]["http_listen_port"])
    assert host_port(client["url"]) == expected
    assert urlsplit(client["url"]).path == "/loki/api/v1/push"


def s3_targets(releases) -> dict[str, tuple[str, list[str], dict]]:
    """component -> (endpoint, buckets, credential env) for Loki and Tempo."""
    loki = merged(releases["loki"])
    tempo = merged(releases["tempo"])["tempo"]
    loki_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in loki["singleBinary"]["extraEnv"]}
    tempo_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in tempo["extraEnv"]}
    s3 = loki["loki"]["storage"]["s3"]
    return {
        "loki": (
            s3["endpoint"],
            list(loki["loki"]["storage"]["bucketNames"].values()),
            {s3["accessKeyId"]: loki_env, s3["secretAccessKey"]: loki_env},
        ),
        "tempo": (
            tempo["storage"]["trace"]["s3"]["endpoint"],
            [tempo["storage"]["trace"]["s3"]["bucket"]],
            {
                tempo["storage"]["trace"]["s3"]["access_key"]: tempo_env,
                tempo["storage"]["trace"]["s3"]["secret_key"]: tempo_env,
            },
        ),
    }


@pytest.mark.parametrize("component", ["loki", "tempo"])
def test_object_storage_is_minio_with_its_buckets_and_secret(releases, component):
    minio = merged(releases["minio"])
    endpoint, buckets, credentials = s3_targets(releases)[component]
    assert host_port(endpoint) == (
        releases["minio"].service_host(SERVICES["minio"]),
        int(minio["service"]["port"]),
    )
    assert set(buckets) <= {bucket["name"] for bucket in minio["buckets"]}
    keys = {}
    for placeholder, env in credentials.items():
        name = re.fullmatch(r"\$\{(\w+)\}", placeholder).group(1)  # expanded by -config.expand-env=true
        keys[env[name]["key"]] = env[name]["name"]
    assert keys == {"rootUser": minio["existingSecret"], "rootPassword": minio["existingSecret"]}
    args = merged(releases[component])
    expand = (
        args["singleBinary"]["extraArgs"]
        if component == "loki"
        else [f"-{k}={v}" for k, v in args["tempo"]["extraArgs"].items()]
    )
    assert "-config.expand-env=true" in expand


def test_buckets_are_not_shared(releases):
    buckets = [b for _, found, _ in s3_targets(releases).values() for b in found]
    assert len(buckets) == len(set(buckets))


def test_secrets_the_charts_read_are_created_by_cluster_up(releases):
    namespace = releases["minio"].namespace
    secrets = {(ns, name): keys for ns, name, keys in created_secrets()}
    assert {"rootUser", "rootPassword"} <= secrets[(namespace, merged(releases["minio"])["existingSecret"])]
    admin = merged(releases["grafana"])["admin"]
    assert {admin["userKey"], admin["passwordKey"]} <= secrets[(namespace, admin["existingSecret"])]
    assert not merged(releases["minio"])["users"], "no default MinIO users with passwords from git"


def test_tempo_remote_writes_to_prometheus_with_exemplars(releases):
    tempo = merged(releases["tempo"])["tempo"]
    generator = tempo["metricsGenerator"]
    assert generator["enabled"]
    assert set(tempo["overrides"]["defaults"]["metrics_generator"]["processors"]) == {
        "service-graphs",
        "span-metrics",
    }
    (remote_write,) = generator["storage"]["remote_write"]
    prometheus = merged(releases["prometheus"])
    expected = (
        releases["prometheus"].service_host(SERVICES["prometheus"]),
        prometheus["server"]["service"]["servicePort"],
    )
    assert (
        host_port(remote_write["url"]) == expected and urlsplit(remote_write["url"]).path == "/api/v1/write"
    )
    assert remote_write["send_exemplars"] is True
    flags = set(prometheus["server"]["extraFlags"])
    assert {"web.enable-remote-write-receiver", "enable-feature=exemplar-storage"} <= flags


def test_prometheus_scrapes_the_pods_with_openmetrics_first(releases):
    prometheus = merged(releases["prometheus"])
    job = prometheus["scrapeConfigs"]["kubernetes-pods"]
    assert job["enabled"] and "scrape_protocols" not in job  # Prometheus 3's default puts OpenMetrics first
    assert "scrape_protocols" not in prometheus["server"]["global"]
    keep = job["relabel_configs"][0]
    assert keep == {
        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
        "action": "keep",
        "regex": True,
    }


# --- Grafana -----------------------------------------------------------------------------------------


def test_datasources_point_at_the_services(releases):
    sources = {source["type"]: source for source in datasources(releases).values()}
    ports = {
        "prometheus": merged(releases["prometheus"])["server"]["service"]["servicePort"],
        "loki": merged(releases["loki"])["loki"]["server"]["http_listen_port"],
        "tempo": merged(releases["tempo"])["tempo"]["server"]["http_listen_port"],
    }
    for kind, port in ports.items():
        assert host_port(sources[kind]["url"]) == (releases[kind].service_host(SERVICES[kind]), port)


def linked_uids(source: dict) -> list[str]:
    data = source.get("jsonData", {})
    uids = [
        link["datasourceUid"]
        for key in ("derivedFields", "exemplarTraceIdDestinations")
        for link in data.get(key, [])
    ]
    uids += [
        data[key]["datasourceUid"]
        for key in ("tracesToLogsV2", "tracesToMetrics", "serviceMap", "lokiSearch")
        if key in data
    ]
    return uids


def test_links_between_datasources_use_provisioned_uids(releases):
    sources = datasources(releases)
    expected = {"loki": {"tempo"}, "prometheus": {"tempo"}, "tempo": {"loki", "prometheus"}}
    assert {uid: set(linked_uids(source)) for uid, source in sources.items()} == expected
    assert {uid: source["type"] for uid, source in sources.items()} == {uid: uid for uid in expected}


def test_grafana_variables_are_escaped_from_env_expansion(releases):
    text = json.dumps(datasources(releases))
    assert "${" not in text.replace("$${", ""), "Grafana expands $VAR in provisioning: write $${...}"
    assert "$__tags" not in text.replace("$$__tags", "")


def test_prometheus_exemplar_link_uses_the_label_the_service_emits(releases, traffic):
    (destination,) = datasources(releases)["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    exemplar_labels = set(re.findall(r' # \{(\w+)="', traffic.openmetrics))
    assert exemplar_labels == {destination["name"]}
    assert f'{destination["name"]}="{KNOWN_TRACE_ID}"' in traffic.openmetrics


def test_derived_field_finds_the_trace_id_in_every_service_log_line(releases, traffic):
    (field,) = datasources(releases)["loki"]["jsonData"]["derivedFields"]
    regex = re.compile(field["matcherRegex"])
    json_lines = [line for line in traffic.log_lines if line.startswith("{")]
    with_trace = [json.loads(line) for line in json_lines if '"trace_id"' in line]
    assert len(with_trace) >= 10, traffic.log_lines
    for line in json_lines:
        event = json.loads(line)
        match = regex.search(line)
        assert (match.group(1) if match else None) == event.get("trace_id"), line
    known = [line for line in json_lines if KNOWN_TRACE_ID in line]
    assert {json.loads(line).get("event") for line in known} >= {
        "prediction",
        None,
    }  # prediction and access log
    assert all(regex.search(line).group(1) == KNOWN_TRACE_ID for line in known)


def test_traces_to_logs_query_uses_labels_promtail_sets(releases):
    tempo = datasources(releases)["tempo"]["jsonData"]["tracesToLogsV2"]
    labels = promtail_labels(releases)
    assert {tag["value"] for tag in tempo["tags"]} <= labels
    assert tempo["customQuery"] and "$${__trace.traceId}" in tempo["query"]
    # the span attribute mapped to the namespace label is one the service sets on its resource
    assert {tag["key"] for tag in tempo["tags"]} == {"k8s.namespace.name"}


def test_dashboards_are_provisioned_from_the_configmap_make_dashboards_writes(releases):
    grafana = merged(releases["grafana"])
    (provider,) = grafana["dashboardProviders"]["dashboardproviders.yaml"]["providers"]
    assert provider["options"]["path"] == f"/var/lib/grafana/dashboards/{provider['name']}"
    configmap = grafana["dashboardsConfigMaps"][provider["name"]]
    (command,) = [words for words in make_dry_run("dashboards") if "create" in words]
    assert command[command.index("configmap") + 1] == configmap
    assert (
        "--from-file=dashboards/" in command and option_value(command, "-n") == releases["grafana"].namespace
    )


def option_value(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def panel_datasources(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel["datasource"])
        found += [target["datasource"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if "datasource" in variable:
            found.append(variable["datasource"])
    return found


def test_dashboards_use_the_provisioned_datasource_uids(releases):
    types = {uid: source["type"] for uid, source in datasources(releases).items()}
    for name, dashboard in dashboards().items():
        for ref in panel_datasources(dashboard):
            assert types.get(ref["uid"]) == ref["type"], f"{name}: {ref}"


def test_dashboards_have_fixed_uids_unique_panels_and_no_pod_names():
    boards = dashboards()
    assert set(boards) == {"service.json", "model.json", "logs.json"}
    assert len({board["uid"] for board in boards.values()}) == 3
    for name, board in boards.items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        text = json.dumps(board)
        assert not re.search(r'pod=~?\\"[a-z0-9-]', text), f"{name} names a pod"
        assert not re.search(r"newsgroups-classifier-[a-f0-9]{6,}", text), f"{name} names a pod"


def test_promtail_labels_stay_low_cardinality(releases):
    stages = merged(releases["promtail"])["config"]["snippets"]["pipelineStages"]
    assert list(stages[0]) == ["cri"]
    match = stages[1]["match"]
    (json_stage,) = [s["json"] for s in match["stages"] if "json" in s]
    (labels,) = [s["labels"] for s in match["stages"] if "labels" in s]
    (metadata,) = [s["structured_metadata"] for s in match["stages"] if "structured_metadata" in s]
    assert set(labels) <= {"level", "logger", "event", "model_version"}
    assert "trace_id" not in promtail_labels(releases) and "trace_id" in metadata
    assert set(labels) | set(metadata) <= set(json_stage["expressions"])
    deployment = find_manifest("Deployment")
    selector = dict(re.findall(r'(\w+)="([^"]+)"', match["selector"]))
    assert selector == {
        "namespace": deployment["metadata"]["namespace"],
        "app": deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
    }


def loki_selectors(dashboard: dict) -> list[str]:
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if target["datasource"]["type"] == "loki"
    ]


def test_log_queries_select_streams_by_labels_promtail_sets(releases):
    labels = promtail_labels(releases)
    queries = [query for board in dashboards().values() for query in loki_selectors(board)]
    assert queries
    for query in queries:
        selector = re.search(r"\{([^}]*)\}", query).group(1)
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
        assert used and used <= labels, f"{query}: {used - labels} are not Promtail labels"


def test_port_forward_targets_the_service_ports(releases):
    (line,) = [words for words in make_dry_run("port-forward") if "port-forward" in words]
    forwards = {}
    for i, word in enumerate(line):
        if word == "port-forward":
            forwards[(line[i - 1], line[i + 1])] = int(line[i + 2].split(":")[1])
    namespace = releases["grafana"].namespace
    expected = {
        (namespace, "svc/grafana"): merged(releases["grafana"])["service"]["port"],
        (namespace, f"svc/{SERVICES['prometheus']}"): merged(releases["prometheus"])["server"]["service"][
            "servicePort"
        ],
        (find_manifest("Service")["metadata"]["namespace"], "svc/newsgroups-classifier"): find_manifest(
            "Service"
        )["spec"]["ports"][0]["port"],
    }
    assert forwards == expected
