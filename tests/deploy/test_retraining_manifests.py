"""manifests/retraining.yaml and the model store's manifests against the programs that read them: each
program's settings are what its ConfigMaps set, each service account has exactly the verbs its program
uses on exactly the objects it names, and the names agree with the Makefile's."""

from __future__ import annotations

import pytest

from newsgroups_classifier.config import RetrainingSettings, StoreSettings, TriggerSettings
from newsgroups_classifier.retraining import MODEL_TAG_ANNOTATION
from support.charts import make_dry_run
from support.deploy_files import find_manifest, manifest_documents


def aliases(settings: type) -> set[str]:
    return {field.alias for field in settings.model_fields.values()}


def cronjob() -> dict:
    (found,) = [doc for _, doc in manifest_documents() if doc["kind"] == "CronJob"]
    return found


def job_container() -> dict:
    (container,) = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def trigger_container() -> dict:
    (container,) = find_manifest("Deployment", "newsgroups-retraining-trigger")["spec"]["template"]["spec"][
        "containers"
    ]
    return container


def init_container() -> dict:
    (container,) = find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]["spec"][
        "initContainers"
    ]
    return container


def configmaps(container: dict) -> list[str]:
    return [ref["configMapRef"]["name"] for ref in container["envFrom"] if "configMapRef" in ref]


@pytest.mark.parametrize(
    "container, settings",
    [
        (job_container, (RetrainingSettings, StoreSettings)),
        (trigger_container, (TriggerSettings,)),
        (init_container, (StoreSettings,)),
    ],
    ids=["job", "trigger", "init container"],
)
def test_every_setting_a_configmap_gives_a_program_is_one_it_reads(container, settings):
    read = set().union(*(aliases(s) for s in settings))
    given = {key for name in configmaps(container()) for key in find_manifest("ConfigMap", name)["data"]}
    assert given and not given - read, f"set but read by nobody: {given - read}"


def test_the_model_store_defaults_are_the_shipped_bucket_and_region():
    """`make publish-model` runs with the defaults and only its own endpoint (the port-forward)."""
    store = find_manifest("ConfigMap", "newsgroups-model-store")["data"]
    defaults = StoreSettings.model_construct()
    assert (defaults.model_store_bucket, defaults.model_store_region) == (
        store["MODEL_STORE_BUCKET"],
        store["MODEL_STORE_REGION"],
    )


def rules(role: str) -> set[tuple[str, str, tuple[str, ...], str]]:
    """(api group, resource, names, verb) of every permission a Role grants."""
    return {
        (group, resource, tuple(rule.get("resourceNames", ())), verb)
        for rule in find_manifest("Role", role)["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def bound(role: str) -> str:
    binding = find_manifest("RoleBinding", role)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role}
    ((subject,),) = [binding["subjects"]]
    return subject["name"]


def test_the_job_may_read_and_point_the_model_configmap_and_patch_the_deployment_nothing_else():
    settings = RetrainingSettings.model_construct()
    assert rules("newsgroups-retraining") == {
        ("", "configmaps", (settings.model_configmap,), "get"),
        ("", "configmaps", (settings.model_configmap,), "patch"),
        ("apps", "deployments", (settings.deployment,), "patch"),
    }
    pod = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert bound("newsgroups-retraining") == pod["serviceAccountName"]
    # The ConfigMap the classifier's init container fetches by, and the Deployment it is in.
    ref = {e["name"]: e for e in init_container()["env"]}["MODEL_TAG"]["valueFrom"]["configMapKeyRef"]
    assert (ref["name"], ref["key"]) == (settings.model_configmap, "MODEL_TAG")
    find_manifest("Deployment", settings.deployment)


def test_the_trigger_may_read_the_template_and_start_and_list_jobs_nothing_else():
    name = cronjob()["metadata"]["name"]
    assert rules("newsgroups-retraining-trigger") == {
        ("batch", "cronjobs", (name,), "get"),
        ("batch", "jobs", (), "create"),
        ("batch", "jobs", (), "get"),
        ("batch", "jobs", (), "list"),
    }
    deployment = find_manifest("Deployment", "newsgroups-retraining-trigger")["spec"]["template"]["spec"]
    assert bound("newsgroups-retraining-trigger") == deployment["serviceAccountName"]
    trigger_env = find_manifest("ConfigMap", "newsgroups-retraining-trigger-env")["data"]
    assert trigger_env["RETRAINING_CRONJOB"] == name
    service = find_manifest("Service", "newsgroups-retraining-trigger")["spec"]
    port = {p["name"]: p["containerPort"] for p in trigger_container()["ports"]}
    assert port[service["ports"][0]["targetPort"]] == int(trigger_env["TRIGGER_PORT"])


def test_the_makefile_retrains_from_the_template_and_serves_through_the_same_names():
    (create,) = [words for words in make_dry_run("retrain") if "create" in words]
    assert f"--from=cronjob/{cronjob()['metadata']['name']}" in create
    rollback = " ".join(" ".join(words) for words in make_dry_run("rollback", MODEL_VERSION="0123abcd"))
    settings = RetrainingSettings.model_construct()
    assert (
        f"configmap {settings.model_configmap} --from-literal=MODEL_TAG=newsgroups_classifier:0123abcd"
        in rollback
    )
    assert f"deployment/{settings.deployment}" in rollback and MODEL_TAG_ANNOTATION in rollback


def test_the_job_and_the_classifier_get_the_store_from_the_same_configmap_and_secret():
    for container in (job_container(), init_container()):
        assert "newsgroups-model-store" in configmaps(container)
        assert {"secretRef": {"name": "model-store-credentials"}} in container["envFrom"]
