"""manifests/: Kubernetes API schemas, custom resources against their CRDs, Pod Security, a security scan,
yamllint, and the Deployment against what the BentoML image and the service really need."""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from bentoml._internal.container.generate import BENTO_UID_GID
from opentelemetry.sdk import environment_variables as sdk_environment

from newsgroups_classifier.config import Settings
from support.charts import KUBERNETES_VERSION, render, run
from support.deploy_files import (
    MANIFESTS,
    created_secrets,
    find_manifest,
    is_builtin,
    kube_score_findings,
    manifest_documents,
    manifest_files,
    schema_errors,
)
from support.paths import REPO, SHARED

CRDS = SHARED / "crds"


# --- Kubernetes API schemas ------------------------------------------------------------------------


def test_every_manifest_matches_the_kubernetes_schema():
    documents = [(path, doc) for path, doc in manifest_documents() if is_builtin(doc)]
    assert {doc["kind"] for _, doc in documents} >= {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceAccount",
    }
    errors = [
        f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {error}"
        for path, doc in documents
        for error in schema_errors(doc)
    ]
    assert not errors, "\n".join(errors)


def test_schema_check_reports_unknown_fields_and_every_error():
    deployment = copy.deepcopy(find_manifest("Deployment", "newsgroups-classifier"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolcy"] = "Always"  # typo: an unknown field
    container["ports"][0]["containerPort"] = "3000"  # wrong type
    errors = schema_errors(deployment)
    assert len(errors) == 2, errors
    assert any("imagePullPolcy" in error for error in errors)


# --- custom resources ------------------------------------------------------------------------------


def closed(schema):
    """The CRD schema with every object that lists properties closed, as strict field validation treats it."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif isinstance(schema, list):
        schema = [closed(item) for item in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> closed JSON schema, for every served version of the shared CRDs."""
    schemas = {}
    for path in CRDS.rglob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                for version in crd["spec"]["versions"]:
                    if version.get("served"):
                        key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                        schemas[key] = closed(version["schema"]["openAPIV3Schema"])
    return schemas


def custom_resource_errors(document: dict) -> list[str]:
    schema = crd_schemas().get((document["apiVersion"], document["kind"]))
    if schema is None:
        return [f"no CRD in {CRDS} serves {document['apiVersion']} {document['kind']}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(document)
    ]


def test_custom_resources_match_the_shared_crds():
    custom = [(path, doc) for path, doc in manifest_documents() if not is_builtin(doc)]
    assert [doc["kind"] for _, doc in custom] == ["PodMonitor"]
    errors = [f"{path.name}: {error}" for path, doc in custom for error in custom_resource_errors(doc)]
    assert not errors, "\n".join(errors)


def test_custom_resource_check_rejects_unknown_fields():
    monitor = copy.deepcopy(find_manifest("PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["scrapeProtocols"] = ["OpenMetricsText1.0.0"]  # wrong level
    errors = custom_resource_errors(monitor)
    assert len(errors) == 1 and "scrapeProtocols" in errors[0], errors


def test_pod_monitor_scrapes_what_the_annotations_scrape():
    monitor = find_manifest("PodMonitor")["spec"]
    pod = find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]
    endpoint = monitor["podMetricsEndpoints"][0]
    port = next(p for p in pod["spec"]["containers"][0]["ports"] if p["name"] == endpoint["port"])
    assert str(port["containerPort"]) == pod["metadata"]["annotations"]["prometheus.io/port"]
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


# --- Pod Security, security scan, yamllint ---------------------------------------------------------


def test_pods_meet_the_restricted_pod_security_profile(podsecurity):
    result = run(
        [podsecurity, "-level", "restricted", "-version", f"v{KUBERNETES_VERSION}", *manifest_files()]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Deployment/newsgroups-classifier: allowed by restricted" in result.stdout


@pytest.mark.parametrize(
    "field, value",
    [
        ("allowPrivilegeEscalation", True),
        ("runAsNonRoot", None),
        ("capabilities", {"add": ["NET_ADMIN"]}),
    ],
)
def test_pod_security_check_denies_a_weaker_pod(podsecurity, tmp_path, field, value):
    deployment = copy.deepcopy(find_manifest("Deployment", "newsgroups-classifier"))
    pod = deployment["spec"]["template"]["spec"]
    for context in (pod["securityContext"], pod["containers"][0]["securityContext"]):
        context.pop(field, None)
    if value is not None:
        pod["containers"][0]["securityContext"][field] = value
    path = tmp_path / "weaker.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = run([podsecurity, "-level", "restricted", "-version", f"v{KUBERNETES_VERSION}", path])
    assert result.returncode == 1 and "DENIED" in result.stdout, result.stdout + result.stderr


def test_namespace_enforces_the_profile_that_is_checked():
    labels = find_manifest("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == f"v{KUBERNETES_VERSION}"
    gomod = (REPO / "tests/deploy/podsecurity/go.mod").read_text()
    minor = KUBERNETES_VERSION.split(".")[1]
    assert re.search(rf"k8s.io/pod-security-admission v0\.{minor}\.\d+", gomod), (
        "checker pinned to another version"
    )


# kube-score findings accepted on purpose, each with its reason:
KUBE_SCORE_IGNORED = {
    # The image is built locally and loaded into the cluster (kind/k3d/minikube) or pushed with a unique tag;
    # `Always` would fail on clusters without a registry. Pin by tag or digest instead (docs/deployment.md).
    "container-image-pull-policy",
    # `bentoml containerize` creates user bentoml with uid/gid 1034 owning the Bento and its venv; the
    # restricted Pod Security profile requires non-root, which holds. kube-score's > 10000 is a heuristic
    # against clashes with host users.
    "container-security-context-user-group-id",
}


def test_kube_score_finds_nothing_unexplained(kube_score):
    findings = kube_score_findings(
        kube_score, [p for p in manifest_files() if p.parent == MANIFESTS], KUBE_SCORE_IGNORED
    )
    assert not findings, "\n".join(findings)


def test_yamllint():
    files = [*manifest_files(), *sorted((REPO / "helm-config").glob("*/values.yaml"))]
    result = run(
        [
            Path(REPO / ".venv/bin/yamllint").with_name("yamllint"),
            "--strict",
            "-c",
            REPO / "tests/deploy/yamllint.yaml",
            *files,
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the Deployment against the image and the service ----------------------------------------------


def container() -> dict:
    return find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]["spec"]["containers"][0]


def env() -> dict[str, dict]:
    return {item["name"]: item for item in container()["env"]}


def test_runs_as_the_user_bentoml_containerize_creates():
    pod = find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == container()["securityContext"]["runAsUser"] == BENTO_UID_GID
    assert pod["securityContext"]["runAsGroup"] == BENTO_UID_GID


def test_writable_paths_are_emptydirs_on_a_read_only_root():
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {
        v["name"]: v
        for v in find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]["spec"]["volumes"]
    }
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}
    # BentoML's home (metrics multiprocess files, feedback-seen.sqlite, stdout.lock) and /tmp are writable.
    for path in (env()["BENTOML_HOME"]["value"], "/tmp"):
        assert "emptyDir" in mounts[path], f"{path} must be an emptyDir"
    config = Path(env()["BENTOML_CONFIG"]["value"])
    config_volume = mounts[str(config.parent)]["configMap"]
    assert config_volume["name"] == "newsgroups-classifier-bentoml"
    assert {"key": "bentoml.yaml", "path": config.name} in config_volume["items"]


def test_probes_port_and_scrape_annotations_match_the_service():
    bentoml_config = yaml.safe_load(
        find_manifest("ConfigMap", "newsgroups-classifier-bentoml")["data"]["bentoml.yaml"]
    )
    port = next(p for p in container()["ports"] if p["name"] == "http")
    assert port["containerPort"] == 3000  # `bentoml serve` in the image listens on 3000 unless configured
    assert "port" not in bentoml_config["services"].get("http", {})
    assert container()["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "3000",
        "prometheus.io/path": "/metrics",
    }
    service = find_manifest("Service", "newsgroups-classifier")["spec"]
    assert (
        service["ports"][0]["targetPort"] == "http"
        and service["selector"].items()
        <= find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]["metadata"][
            "labels"
        ].items()
    )


def service_env_names() -> set[str]:
    """The environment variables the service reads: its settings' (config.Settings), and those the
    OpenTelemetry SDK reads itself."""
    sdk = {value for name, value in vars(sdk_environment).items() if name.startswith("OTEL_")}
    return {field.alias for field in Settings.model_fields.values()} | sdk


def test_environment_is_what_the_service_and_bentoml_read():
    configmap = find_manifest("ConfigMap", "newsgroups-classifier-env")["data"]
    assert container()["envFrom"] == [{"configMapRef": {"name": "newsgroups-classifier-env"}}]
    read = service_env_names()
    bentoml = {"BENTOML_CONFIG", "BENTOML_HOME", "BENTOML_DO_NOT_TRACK", "PYTHONDONTWRITEBYTECODE"}
    unknown = (set(configmap) | set(env())) - read - bentoml
    assert not unknown, f"set but read by nobody: {unknown}"
    assert (
        env()["FEEDBACK_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "newsgroups-classifier-feedback"
    )
    assert env()["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env()["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert {"FEEDBACK_SIGNING_KEY", "POD_NAME", "POD_NAMESPACE", "DEPLOYMENT_ENVIRONMENT"} <= read


def test_secrets_referenced_by_the_manifests_are_created_by_cluster_up():
    namespace = find_manifest("Deployment", "newsgroups-classifier")["metadata"]["namespace"]
    ref = env()["FEEDBACK_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert any(
        ns == namespace and name == ref["name"] and ref["key"] in keys for ns, name, keys in created_secrets()
    )


def test_every_resource_is_in_the_service_namespace():
    namespace = find_manifest("Namespace")["metadata"]["name"]
    for path, doc in manifest_documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, f"{path.name} {doc['kind']}"


def workloads(objects: list[dict]) -> list[tuple[dict, set[int]]]:
    """(pod labels, container ports) of every workload a rendering runs."""
    found = []
    for doc in objects:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            pod = doc["spec"]["template"]
            ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            found.append((pod["metadata"]["labels"], ports))
    return found


def reaches(policy: dict, release, objects: list[dict], port: int) -> bool:
    """Whether an egress rule of `policy` lets its pods reach `port` of a pod the release runs."""
    for rule in policy["egress"]:
        if port not in {p["port"] for p in rule["ports"]}:
            continue
        for peer in rule.get("to", []):
            namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            selected = peer.get("podSelector", {}).get("matchLabels", {}).items()
            if namespace == release.namespace and any(
                selected <= labels.items() and port in ports for labels, ports in workloads(objects)
            ):
                return True
    return False


def reaches_dns(policy: dict) -> bool:
    return any(
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "kube-system"
        and {(p["port"], p["protocol"]) for p in rule["ports"]} == {(53, "UDP"), (53, "TCP")}
        for rule in policy["egress"]
        for peer in rule.get("to", [])
    )


def test_network_policy_lets_the_service_reach_the_collector_the_model_store_and_dns(releases, helm):
    policy = find_manifest("NetworkPolicy", "newsgroups-classifier")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    env = find_manifest("ConfigMap", "newsgroups-classifier-env")["data"]
    collector = releases["opentelemetry-collector"]
    otlp_port = int(env["OTEL_EXPORTER_OTLP_ENDPOINT"].rsplit(":", 1)[1])
    assert reaches(policy, collector, render(collector, helm), otlp_port)
    store = find_manifest("ConfigMap", "newsgroups-model-store")["data"]
    store_port = int(store["MODEL_STORE_ENDPOINT"].rsplit(":", 1)[1])
    assert reaches(policy, releases["minio"], render(releases["minio"], helm), store_port)
    assert reaches_dns(policy)


def test_network_policy_lets_the_retraining_job_reach_loki_the_model_store_and_the_api(releases, helm):
    policy = find_manifest("NetworkPolicy", "newsgroups-retraining")["spec"]
    (cronjob,) = [doc for _, doc in manifest_documents() if doc["kind"] == "CronJob"]
    assert policy["podSelector"]["matchLabels"].items() <= (
        cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items()
    )
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and not policy.get("ingress")
    loki_port = int(
        find_manifest("ConfigMap", "newsgroups-retraining-env")["data"]["LOKI_URL"].rsplit(":", 1)[1]
    )
    assert reaches(policy, releases["loki"], render(releases["loki"], helm), loki_port)
    store = find_manifest("ConfigMap", "newsgroups-model-store")["data"]
    store_port = int(store["MODEL_STORE_ENDPOINT"].rsplit(":", 1)[1])
    assert reaches(policy, releases["minio"], render(releases["minio"], helm), store_port)
    assert reaches_dns(policy)
    assert any(
        not rule.get("to") and {p["port"] for p in rule["ports"]} == {443, 6443} for rule in policy["egress"]
    )


def test_bentoml_build_packages_the_service_the_image_runs():
    """`make build` runs `bentoml build` in the repository: its build config must name our service."""
    from bentoml._internal.bento.build_config import BentoBuildConfig

    from support.service_process import SERVICE

    config = BentoBuildConfig.from_file(str(REPO / "pyproject.toml"))
    assert config.service == SERVICE, "add [tool.bentoml.build] service = ... to pyproject.toml"
    assert config.python.is_src_layout and "src/newsgroups_classifier/*.py" in (config.include or [])
    assert {package.split(">")[0].split("<")[0] for package in config.python.packages} >= {
        "bentoml",
        "scikit-learn",
    }
