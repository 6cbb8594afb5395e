"""Names that must agree across files: endpoints, ports, buckets, Secrets, datasource uids, labels, and the
derived-field regex against real log lines of the service."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest

from support.charts import cluster_releases, make_dry_run
from support.deploy_files import (
    KNOWN_TRACE_ID,
    SERVICES,
    collector_labels,
    created_secrets,
    dashboards,
    datasources,
    find_manifest,
    host_port,
    merged,
    otlp_index_attributes,
    promtail_labels,
)


def otlp_exporter() -> dict:
    """Where the service's OpenTelemetry SDK sends spans, and how (its ConfigMap's OTEL_* variables)."""
    env = find_manifest("ConfigMap", "newsgroups-classifier-env")["data"]
    protocol = {"grpc": "grpc", "http/protobuf": "http"}[env["OTEL_EXPORTER_OTLP_PROTOCOL"]]
    return {"protocol": protocol, "endpoint": env["OTEL_EXPORTER_OTLP_ENDPOINT"]}


def collector() -> dict:
    """The collector's configuration as its values give it (the chart merges it into its defaults)."""
    return merged(cluster_releases()["opentelemetry-collector"])["config"]


def test_service_sends_otlp_to_the_collector_service(releases):
    exporter = otlp_exporter()
    values = merged(releases["opentelemetry-collector"])
    receiver = values["config"]["receivers"]["otlp"]["protocols"][exporter["protocol"]]
    port = values["ports"]["otlp" if exporter["protocol"] == "grpc" else "otlp-http"]
    assert values["mode"] == "daemonset" and values["service"]["enabled"]
    assert host_port(exporter["endpoint"]) == (
        releases["opentelemetry-collector"].service_host(SERVICES["opentelemetry-collector"]),
        port["servicePort"],
    )
    # The pod's own address (not localhost), on the container port the Service targets.
    assert receiver["endpoint"] == f"${{env:MY_POD_IP}}:{port['containerPort']}"


def test_the_collector_exports_to_tempo_loki_and_prometheus(releases):
    config = collector()
    tempo = merged(releases["tempo"])["tempo"]
    tempo_receiver = tempo["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert host_port(tempo_receiver)[0] == "0.0.0.0"  # all interfaces: reached from the collector pods
    exporters = config["exporters"]
    assert host_port(exporters["otlp_grpc/tempo"]["endpoint"]) == (
        releases["tempo"].service_host(SERVICES["tempo"]),
        host_port(tempo_receiver)[1],
    )
    loki = merged(releases["loki"])
    assert loki["deploymentMode"] == "Monolithic" and not loki["gateway"]["enabled"]
    endpoint = exporters["otlp_http/loki"]["endpoint"]
    assert host_port(endpoint) == (
        releases["loki"].service_host(SERVICES["loki"]),
        loki["loki"]["server"]["http_listen_port"],
    )
    assert urlsplit(endpoint).path == "/otlp"  # Loki's native OTLP ingestion
    prometheus = merged(releases["prometheus"])
    metrics = exporters["otlp_http/prometheus"]["metrics_endpoint"]
    assert host_port(metrics) == (
        releases["prometheus"].service_host(SERVICES["prometheus"]),
        prometheus["server"]["service"]["servicePort"],
    )
    assert urlsplit(metrics).path == "/api/v1/otlp/v1/metrics"
    assert {"web.enable-otlp-receiver", "enable-feature=exemplar-storage"} <= set(
        prometheus["server"]["extraFlags"]
    )


def test_span_metrics_come_from_the_collector_with_exemplars(releases):
    config = collector()
    pipelines = config["service"]["pipelines"]
    assert "span_metrics" in pipelines["traces"]["exporters"]
    assert pipelines["metrics"] == {
        "receivers": ["span_metrics"],
        "processors": ["memory_limiter", "batch"],
        "exporters": ["otlp_http/prometheus"],
    }
    assert config["connectors"]["span_metrics"]["exemplars"]["enabled"] is True
    # Only the collector exports to Prometheus: no scrape exporter (it drops exemplars), nothing else.
    assert not [e for e in config["exporters"] if e.startswith("prometheus")]


def test_promtail_pushes_to_the_loki_service(releases):
    loki = merged(releases["loki"])
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
    for user in merged(releases["minio"])[
        "users"
    ]:  # no password from git: each from a Secret cluster-up makes
        assert "secretKey" not in user, f"MinIO user {user['accessKey']} has a password in git"
        assert user["existingSecretKey"] in secrets[(namespace, user["existingSecret"])]


def test_the_model_store_is_a_minio_bucket_with_a_user_limited_to_it(releases):
    """manifests/model-store.yaml names MinIO's Service and a bucket the chart makes; the credentials the
    pods read (model-store-credentials) are those of a MinIO user whose policy reaches that bucket only."""
    minio = merged(releases["minio"])
    store = find_manifest("ConfigMap", "newsgroups-model-store")["data"]
    assert host_port(store["MODEL_STORE_ENDPOINT"]) == (
        releases["minio"].service_host(SERVICES["minio"]),
        int(minio["service"]["port"]),
    )
    bucket = store["MODEL_STORE_BUCKET"]
    assert bucket in {b["name"] for b in minio["buckets"]}
    secrets = {(ns, name): keys for ns, name, keys in created_secrets()}
    namespace = find_manifest("ConfigMap", "newsgroups-model-store")["metadata"]["namespace"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= secrets[(namespace, "model-store-credentials")]
    (access_key,) = [
        w.split("=", 2)[2]
        for words in make_dry_run("cluster-up")
        if "model-store-credentials" in words and "generic" in words
        for w in words
        if w.startswith("--from-literal=AWS_ACCESS_KEY_ID=")
    ]
    (user,) = [u for u in minio["users"] if u["accessKey"] == access_key]
    (policy,) = [p for p in minio["policies"] if p["name"] == user["policy"]]
    resources = {r for statement in policy["statements"] for r in statement["resources"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}


def test_tempo_makes_only_the_service_graph_and_remote_writes_it_to_prometheus(releases):
    tempo = merged(releases["tempo"])["tempo"]
    generator = tempo["metricsGenerator"]
    assert generator["enabled"]
    # Span metrics come from the collector: Tempo's span-metrics processor would count every span twice.
    assert tempo["overrides"]["defaults"]["metrics_generator"]["processors"] == ["service-graphs"]
    (remote_write,) = generator["storage"]["remote_write"]
    prometheus = merged(releases["prometheus"])
    expected = (
        releases["prometheus"].service_host(SERVICES["prometheus"]),
        prometheus["server"]["service"]["servicePort"],
    )
    assert (
        host_port(remote_write["url"]) == expected and urlsplit(remote_write["url"]).path == "/api/v1/write"
    )
    assert "web.enable-remote-write-receiver" in prometheus["server"]["extraFlags"]


def test_prometheus_scrapes_the_annotated_pods(releases):
    prometheus = merged(releases["prometheus"])
    job = prometheus["scrapeConfigs"]["kubernetes-pods"]
    assert job["enabled"] and "scrape_protocols" not in job  # Prometheus 3 negotiates the text format
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


def test_prometheus_exemplars_link_to_tempo_by_the_span_metrics_label(releases):
    """The span_metrics connector's exemplars carry the trace id; Prometheus names that label trace_id
    (tests/e2e proves it on the stored exemplars)."""
    (destination,) = datasources(releases)["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination == {"name": "trace_id", "datasourceUid": "tempo", "urlDisplayLabel": "View trace"}


def test_derived_field_finds_the_trace_id_in_every_service_log_line(releases, traffic):
    by_label, in_line = datasources(releases)["loki"]["jsonData"]["derivedFields"]
    # Both agents store the id as structured metadata named trace_id: Loki's OTLP endpoint from the
    # record's TraceId, Promtail from its structured_metadata stage.
    assert (by_label["matcherType"], by_label["matcherRegex"]) == ("label", "trace_id")
    assert "trace_id" in promtail_structured_metadata(releases)
    assert in_line["matcherType"] == "regex"
    regex = re.compile(in_line["matcherRegex"])
    json_lines = [line for line in traffic.log_lines if line.startswith("{")]
    # Only sampled requests' lines carry a trace id (the traffic's are unsampled but the known one).
    for line in json_lines:
        event = json.loads(line)
        match = regex.search(line)
        assert (match.group(1) if match else None) == event.get("trace_id"), line
    (known,) = [line for line in json_lines if KNOWN_TRACE_ID in line]  # one line per prediction
    assert json.loads(known)["event"] == "prediction"
    assert regex.search(known).group(1) == KNOWN_TRACE_ID


def promtail_structured_metadata(releases) -> set[str]:
    stages = merged(releases["promtail"])["config"]["snippets"]["pipelineStages"]
    return {
        key
        for stage in stages
        for inner in stage.get("match", {}).get("stages", [])
        for key in inner.get("structured_metadata", {})
    }


def test_both_log_agents_give_loki_the_same_labels(releases):
    assert promtail_labels(releases) == collector_labels(releases)
    assert {"trace_id", "span_id"} <= promtail_structured_metadata(releases)
    assert not {"trace_id", "span_id"} & collector_labels(releases)


def operators() -> list[dict]:
    return collector()["receivers"]["filelog"]["operators"]


def test_the_collector_sets_every_attribute_loki_indexes(releases):
    written = {
        re.fullmatch(r'resource\["([^"]+)"\]', op["to"]).group(1)
        for op in operators()
        if op["type"] in ("copy", "move") and op["to"].startswith("resource[")
    }
    assert set(otlp_index_attributes(releases)) == written


def test_both_agents_parse_only_the_classifier_lines(releases):
    deployment = find_manifest("Deployment", "newsgroups-classifier")
    expected = {
        "namespace": deployment["metadata"]["namespace"],
        "container": deployment["spec"]["template"]["spec"]["containers"][0]["name"],
    }
    stages = merged(releases["promtail"])["config"]["snippets"]["pipelineStages"]
    (match,) = [stage["match"] for stage in stages if "match" in stage]
    assert dict(re.findall(r'(\w+)="([^"]+)"', match["selector"])) == expected
    (parser,) = [op for op in operators() if op["type"] == "json_parser"]
    assert dict(re.findall(r'resource\["(\w+)"\] == "([^"]+)"', parser["if"])) == expected


def test_traces_to_logs_query_uses_labels_both_agents_set(releases):
    tempo = datasources(releases)["tempo"]["jsonData"]["tracesToLogsV2"]
    assert {tag["value"] for tag in tempo["tags"]} <= promtail_labels(releases) & collector_labels(releases)
    assert tempo["customQuery"] and '| trace_id = "$${__trace.traceId}"' in tempo["query"]
    # the span attributes mapped to labels are ones the service sets on its resource (POD_NAMESPACE, POD_NAME)
    assert {tag["key"] for tag in tempo["tags"]} == {"k8s.namespace.name", "k8s.pod.name"}


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
        if panel["type"] == "row":  # a heading: no query
            continue
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
    assert set(labels) <= {"level", "logger", "event", "model_version"}
    assert not {"trace_id", "span_id", "filename"} & promtail_labels(releases)
    assert set(labels) | promtail_structured_metadata(releases) <= set(json_stage["expressions"])


def loki_selectors(dashboard: dict) -> list[str]:
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])  # a row has none
        if target["datasource"]["type"] == "loki"
    ]


def test_log_queries_select_streams_by_labels_both_agents_set(releases):
    labels = promtail_labels(releases) & collector_labels(releases)
    queries = [query for board in dashboards().values() for query in loki_selectors(board)]
    assert queries
    for query in queries:
        selector = re.search(r"\{([^}]*)\}", query).group(1)
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
        assert used and used <= labels, f"{query}: {used - labels} are not labels of both agents"


def test_port_forward_targets_the_service_ports(releases):
    (line,) = [words for words in make_dry_run("port-forward") if "port-forward" in words]
    forwards = {}
    for i, word in enumerate(line):
        if word == "port-forward":
            forwards[(line[i - 1], line[i + 1])] = int(line[i + 2].split(":")[1])
    namespace = releases["grafana"].namespace
    service = find_manifest("Service", "newsgroups-classifier")
    expected = {
        (namespace, "svc/grafana"): merged(releases["grafana"])["service"]["port"],
        (namespace, f"svc/{SERVICES['prometheus']}"): merged(releases["prometheus"])["server"]["service"][
            "servicePort"
        ],
        (service["metadata"]["namespace"], "svc/newsgroups-classifier"): service["spec"]["ports"][0]["port"],
    }
    assert forwards == expected
