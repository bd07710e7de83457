"""The pure builders of every child object: built from the churn example and variations of it, checked as dicts."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcycle_operator.api.driftmonitor import DriftMonitorSpec
from mlcycle_operator.api.mlproject import MLProjectSpec
from mlcycle_operator.api.modeldeployment import ModelDeploymentSpec, VersionTraffic
from mlcycle_operator.api.trainingjob import TrainingJobSpec
from mlcycle_operator.resources import common, monitor, project, serving, training
from mlcycle_operator.resources.common import CONFIG_FILE, CONFIG_MOUNT, Meta
from mlcycle_operator.resources.compare import Action, action_for
from mlcycle_operator.units import parse_quantity

MANIFESTS = Path(__file__).resolve().parents[2] / "examples" / "churn" / "manifests"


def _load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


PROJECT_DOC = _load("01-mlproject.yaml")
TRAINING_DOC = _load("02-trainingjob.yaml")
DEPLOYMENT_DOC = _load("03-modeldeployment.yaml")
MONITOR_DOC = _load("04-driftmonitor.yaml")

NAMESPACE = "ml"
IMAGE = "ghcr.io/mlcycle/runtime:0.1.0"
PROJECT_META = Meta(name="churn", namespace=NAMESPACE, uid="p-uid")
JOB_META = Meta(name="churn-v1", namespace=NAMESPACE, uid="j-uid", labels={"mlcycle.io/model": "churn-classifier"})
MD_META = Meta(name="churn", namespace=NAMESPACE, uid="d-uid")
MON_META = Meta(name="churn", namespace=NAMESPACE, uid="m-uid")
VERSION = "20250301-1200-3f2a"
CANDIDATE = "20250308-0900-77ab"
MODEL_URI = f"pvc://churn-models/artifacts/churn/models/churn-classifier/{VERSION}"
WORKLOAD_SA = "mlcycle-churn-workload"
GPU = "nvidia.com/gpu"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
TRAFFIC = [VersionTraffic(version=VERSION, weight=90, role="stable"),
           VersionTraffic(version=CANDIDATE, weight=10, role="candidate")]


# --- specs: the example, with changes ---------------------------------------------------------------------------


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in depth; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def project_spec(**changes: Any) -> MLProjectSpec:
    return MLProjectSpec.model_validate(merged(PROJECT_DOC["spec"], changes))


def job_spec(**changes: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(merged(TRAINING_DOC["spec"], changes))


def md_spec(**changes: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(merged(DEPLOYMENT_DOC["spec"], changes))


def monitor_spec(**changes: Any) -> DriftMonitorSpec:
    return DriftMonitorSpec.model_validate(merged(MONITOR_DOC["spec"], changes))


NO_FEATURE_STORE = {"featureStore": None}
FILE_STORAGE = {"storage": {"uri": "file:///var/lib/mlcycle/artifacts", "pvc": None}}
S3_STORAGE = {"storage": {"uri": "s3://models/churn", "pvc": None}}
SQLITE = {"featureStore": {"onlineStore": {"type": "sqlite", "connectionString": None}}}
ONLINE_FEATURES = {"serving": {"onlineFeatures": {"featureService": "churn_features", "entityKeys": ["customer_id"]}}}

# Each variation changes the example's project, training job, deployment and monitor specs.
VARIANTS: dict[str, dict[str, dict]] = {
    "example": {},
    "file-storage-no-feature-store": {"project": {**FILE_STORAGE, **NO_FEATURE_STORE}},
    "s3-storage-sqlite": {"project": {**S3_STORAGE, **SQLITE}, "md": ONLINE_FEATURES},
    "gpu-3-workers": {"job": {"distribution": {"workers": 3, "gpuPerWorker": 1, "memoryPerWorker": "4Gi"}},
                      "md": {"serving": {"resources": {"cpu": 2, "memory": "8Gi", "gpu": 1}}},
                      "monitor": {"resources": {"cpu": 1, "memory": "2Gi", "gpu": 1}}},
    "no-autoscaling-no-tuning": {"job": {"tuning": None},
                                 "md": {"serving": {"autoscaling": {"enabled": False}, "replicas": 1}}},
}


def specs(variant: str) -> tuple[MLProjectSpec, TrainingJobSpec, ModelDeploymentSpec, DriftMonitorSpec]:
    changes = VARIANTS[variant]
    return (project_spec(**changes.get("project", {})), job_spec(**changes.get("job", {})),
            md_spec(**changes.get("md", {})), monitor_spec(**changes.get("monitor", {})))


def pod_bearing(variant: str) -> list[tuple[str, dict, str, str]]:
    return pod_bearing_for(*specs(variant))


def pod_bearing_for(p: MLProjectSpec, j: TrainingJobSpec, m: ModelDeploymentSpec,
                    d: DriftMonitorSpec) -> list[tuple[str, dict, str, str]]:
    """(what, object, where its config is mounted, the name of the ConfigMap built beside it) per pod-bearing child."""
    built = []
    cron = project.materialization_cron_job(p, PROJECT_META, IMAGE)
    if cron is not None:
        feast_config = name_of(project.feature_store_config_map(p, PROJECT_META))
        built.append(("materialization", cron, "/etc/feast", feast_config))
    train_config = name_of(training.config_map(j, JOB_META, training.training_config(j, JOB_META, p, None)))
    built.append(("training-job", training.batch_job(j, JOB_META, p, IMAGE), CONFIG_MOUNT, train_config))
    built.append(("training-rayjob", training.ray_job(j, JOB_META, p, IMAGE), CONFIG_MOUNT, train_config))
    server = [c for c in serving.children_for_version(m, MD_META, VERSION, MODEL_URI, p, IMAGE)
              if c["kind"] in ("ConfigMap", "Deployment")]
    built.append(("model-server", server[1], CONFIG_MOUNT, name_of(server[0])))
    built.append(("router", serving.router_deployment(m, MD_META, p, IMAGE), CONFIG_MOUNT,
                  name_of(serving.router_config_map(m, MD_META, TRAFFIC, None))))
    built.append(("drift-monitor", monitor.deployment(d, MON_META, "churn", p, IMAGE, "hash"), CONFIG_MOUNT,
                  name_of(monitor.config_map(d, MON_META, "churn", {}))))
    return built


def all_children(variant: str) -> list[dict]:
    """Every object the builders make for one variation, as the handlers would apply them."""
    p, j, m, d = specs(variant)
    config = monitor.monitor_config(d, MON_META, {"stableVersion": VERSION}, None, None)
    return [
        *project.children(p, PROJECT_META, IMAGE),
        training.config_map(j, JOB_META, training.training_config(j, JOB_META, p, None)),
        training.batch_job(j, JOB_META, p, IMAGE),
        training.ray_job(j, JOB_META, p, IMAGE),
        *serving.children_for_version(m, MD_META, VERSION, MODEL_URI, p, IMAGE),
        *serving.children_for_version(m, MD_META, CANDIDATE, MODEL_URI, p, IMAGE),
        serving.router_config_map(m, MD_META, TRAFFIC, MODEL_URI),
        serving.router_deployment(m, MD_META, p, IMAGE),
        serving.router_service(m, MD_META),
        serving.service_monitor(m, MD_META),
        *monitor.children(d, MON_META, "churn", p, IMAGE, config, with_prometheus_rule=True),
    ]


# --- reading the built dicts --------------------------------------------------------------------------------------


def name_of(obj: dict | None) -> str:
    assert obj is not None
    return obj["metadata"]["name"]


def pod_templates(obj: dict) -> list[dict]:
    """The pod templates (metadata and spec) of a Deployment, Job, CronJob or RayJob."""
    spec = obj["spec"]
    if obj["kind"] in ("Deployment", "Job"):
        return [spec["template"]]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    if obj["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    raise AssertionError(f"no pods in a {obj['kind']}")


def pod_specs(obj: dict) -> list[dict]:
    return [t["spec"] for t in pod_templates(obj)]


def containers(obj: dict) -> list[dict]:
    return [c for pod in pod_specs(obj) for c in pod["containers"]]


def limits(obj: dict) -> list[dict]:
    return [c["resources"]["limits"] for c in containers(obj)]


def volume_for(pod: dict, mount_path: str) -> dict | None:
    """The volume mounted at `mount_path` in every container of the pod, else None."""
    found = []
    for container in pod["containers"]:
        names = [m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == mount_path]
        if not names:
            return None
        found.extend(v for v in pod.get("volumes", []) if v["name"] == names[0])
    return found[0] if found else None


def config_data(config_map: dict) -> dict:
    return json.loads(config_map["data"][CONFIG_FILE])


def deployment_pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, pod_labels: dict) -> bool:
    return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())


def walk(value: Any, path: str = ""):
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]")


WORKLOADS = [pytest.param(obj, mount, config_map, id=f"{variant}-{what}")
             for variant in VARIANTS for what, obj, mount, config_map in pod_bearing(variant)]
CHILDREN = [pytest.param(child, id=f"{variant}-{child['kind']}-{child['metadata']['name']}")
            for variant in VARIANTS for child in all_children(variant)]


# --- every pod-bearing object ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_pods_run_restricted(obj, mount, config_map):
    for pod in pod_specs(obj):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert "privileged" not in security
            assert "add" not in security["capabilities"]


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_pods_have_a_writable_tmp(obj, mount, config_map):
    for pod in pod_specs(obj):
        volume = volume_for(pod, "/tmp")
        assert volume is not None, "the root filesystem is read-only: /tmp must be a volume"
        assert "emptyDir" in volume
        assert not any(m.get("readOnly") for c in pod["containers"] for m in c["volumeMounts"]
                       if m["mountPath"] == "/tmp")


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_containers_have_requests_and_limits(obj, mount, config_map):
    for container in containers(obj):
        resources = container["resources"]
        for section in ("requests", "limits"):
            assert parse_quantity(resources[section]["cpu"]) > 0
            assert parse_quantity(resources[section]["memory"]) > 0
        for name, request in resources["requests"].items():
            assert parse_quantity(request) <= parse_quantity(resources["limits"][name])


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_the_config_map_built_beside_the_workload_is_mounted(obj, mount, config_map):
    for pod in pod_specs(obj):
        volume = volume_for(pod, mount)
        assert volume is not None, f"nothing mounted at {mount}"
        assert volume["configMap"]["name"] == config_map


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_runtime_commands_read_the_mounted_config(obj, mount, config_map):
    commands = [" ".join(c["command"]) for c in containers(obj) if "command" in c]
    if obj["kind"] == "RayJob":
        commands.append(obj["spec"]["entrypoint"])
    assert commands
    for command in commands:
        assert mount in command


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_pods_run_as_the_project_workload_identity(obj, mount, config_map):
    assert name_of(project.service_account(project_spec(), PROJECT_META)) == WORKLOAD_SA
    for pod in pod_specs(obj):
        assert pod["serviceAccountName"] == WORKLOAD_SA


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_every_mount_has_its_volume_and_every_volume_is_mounted(obj, mount, config_map):
    for pod in pod_specs(obj):
        volumes = [v["name"] for v in pod["volumes"]]
        assert len(volumes) == len(set(volumes))
        mounted = {m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert mounted == set(volumes)


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_gpu_limits_and_the_gpu_toleration_go_together(obj, mount, config_map):
    for pod in pod_specs(obj):
        wants_gpu = any(GPU in c["resources"]["limits"] for c in pod["containers"])
        tolerates = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod.get("tolerations", [])
        assert wants_gpu == tolerates


@pytest.mark.parametrize(("obj", "mount", "config_map"), WORKLOADS)
def test_pod_labels_say_who_owns_them(obj, mount, config_map):
    for template in pod_templates(obj):
        labels = template["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "mlcycle-operator"
        assert labels[common.LABEL_PROJECT] == "churn"
        assert labels[common.LABEL_INSTANCE] == obj["metadata"]["labels"][common.LABEL_INSTANCE]


# --- every child --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("child", CHILDREN)
def test_children_are_namespaced_named_and_labelled(child):
    meta = child["metadata"]
    assert meta["namespace"] == NAMESPACE
    assert len(meta["name"]) <= 63
    assert DNS_LABEL.match(meta["name"])
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "mlcycle-operator"
    for value in meta["labels"].values():
        assert len(value) <= 63
        assert LABEL_VALUE.match(value)


@pytest.mark.parametrize("child", CHILDREN)
def test_children_hold_no_nulls(child):
    # The API server drops nulls; one left in a manifest would make every comparison an Update.
    assert [path for path, value in walk(child) if value is None] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_child_names_are_unique_per_kind(variant):
    keys = [(c["kind"], c["metadata"]["name"]) for c in all_children(variant)
            if c["kind"] not in ("Job", "RayJob")]  # a TrainingJob gets one of the two, never both
    assert len(keys) == len(set(keys))


# --- MLProject ----------------------------------------------------------------------------------------------------


def test_project_children_of_the_example_in_apply_order():
    children = project.children(project_spec(), PROJECT_META, IMAGE)
    assert [c["kind"] for c in children] == [
        "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]


@pytest.mark.parametrize(("changes", "kinds"), [
    pytest.param({**FILE_STORAGE, **NO_FEATURE_STORE}, ["ServiceAccount", "Role", "RoleBinding"], id="bare"),
    pytest.param(S3_STORAGE, ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"], id="s3"),
    pytest.param({"featureStore": {"materialization": {"enabled": False}}},
                 ["PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"],
                 id="no-materialization"),
])
def test_project_children_follow_the_spec(changes, kinds):
    assert [c["kind"] for c in project.children(project_spec(**changes), PROJECT_META, IMAGE)] == kinds


def test_pvc_storage_makes_the_claim():
    pvc = project.storage_pvc(project_spec(), PROJECT_META)
    assert name_of(pvc) == "churn-models"
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}}


def test_pvc_settings_are_applied():
    spec = project_spec(storage={"pvc": {"size": "20Gi", "accessMode": "ReadWriteOnce", "storageClassName": "fast"}})
    pvc = project.storage_pvc(spec, PROJECT_META)
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}},
                           "storageClassName": "fast"}


def test_pvc_storage_without_settings_gets_defaults():
    pvc = project.storage_pvc(project_spec(storage={"uri": "pvc://shared/x", "pvc": None}), PROJECT_META)
    assert name_of(pvc) == "shared"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"


@pytest.mark.parametrize("storage", [FILE_STORAGE, S3_STORAGE])
def test_other_storage_makes_no_claim(storage):
    assert project.storage_pvc(project_spec(**storage), PROJECT_META) is None
    assert project.pvc_claim_name(project_spec(**storage)) is None


# Which pods hold an API token (automountServiceAccountToken), per pod template: only those that call the API.
API_TOKEN = {"materialization": [False], "training-job": [True], "training-rayjob": [True, False],  # head, workers
             "model-server": [False], "router": [True], "drift-monitor": [True]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_pods_that_call_the_api_get_a_token(variant):
    built = pod_bearing(variant)
    assert {what for what, _, _, _ in built} <= set(API_TOKEN)
    for what, obj, _, _ in built:
        assert [pod["automountServiceAccountToken"] for pod in pod_specs(obj)] == API_TOKEN[what], what
    ray_job = next(obj for what, obj, _, _ in built if what == "training-rayjob")
    assert ray_job["spec"]["submitterPodTemplate"]["spec"]["automountServiceAccountToken"] is False
    # The project's identity mounts nothing by default: a pod asks for its token.
    assert project.service_account(specs(variant)[0], PROJECT_META)["automountServiceAccountToken"] is False


STORAGE_CASES = [
    pytest.param(project.pvc_claim_name(specs(variant)[0]), obj, id=f"{variant}-{what}")
    for variant in VARIANTS for what, obj, _, _ in pod_bearing(variant)
]


@pytest.mark.parametrize(("claim", "obj"), STORAGE_CASES)
def test_workloads_mount_the_claim_only_with_pvc_storage(claim, obj):
    for pod in pod_specs(obj):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ([claim] if claim else [])
        if claim:
            assert volume_for(pod, f"/mnt/pvc/{claim}")["persistentVolumeClaim"]["claimName"] == claim


@pytest.mark.parametrize("what", ["training-job", "training-rayjob", "model-server", "router", "drift-monitor"])
def test_s3_credentials_reach_the_workloads_that_use_storage(what):
    p = project_spec(storage={"uri": "s3://models/churn", "pvc": None, "secretName": "churn-s3"})
    [obj] = [obj for name, obj, _, _ in pod_bearing_for(p, job_spec(), md_spec(), monitor_spec()) if name == what]
    for container in containers(obj):
        from_secret = [e for e in container.get("envFrom", []) if e.get("secretRef", {}).get("name") == "churn-s3"]
        from_keys = [e for e in container.get("env", [])
                     if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "churn-s3"]
        assert from_secret or from_keys


def test_workload_identity_binds_the_role_to_the_service_account():
    spec = project_spec()
    sa = project.service_account(spec, PROJECT_META)
    role = project.workload_role(spec, PROJECT_META)
    binding = project.workload_role_binding(spec, PROJECT_META)
    assert name_of(sa) == name_of(role) == name_of(binding) == WORKLOAD_SA
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WORKLOAD_SA}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": WORKLOAD_SA, "namespace": NAMESPACE}]


def test_the_workload_role_grants_only_what_workloads_use():
    rules = project.workload_role(project_spec(), PROJECT_META)["rules"]
    assert rules
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
        assert not {"secrets", "pods/exec", "serviceaccounts/token", "roles", "rolebindings"} & set(rule["resources"])
        assert set(rule["verbs"]) <= {"get", "list", "watch", "patch"}
        assert "patch" not in rule["verbs"] or all(r.endswith("/status") for r in rule["resources"])
    statuses = {r for rule in rules if "patch" in rule["verbs"] for r in rule["resources"]}
    assert statuses == {"trainingjobs/status", "driftmonitors/status", "batchpredictions/status"}


def test_feature_store_yaml_of_the_example_keeps_everything_on_the_claim():
    config = yaml.safe_load(project.feature_store_yaml(project_spec()))
    assert config == {
        "project": "churn",
        "registry": "/mnt/pvc/churn-models/feast/registry.db",
        "provider": "local",
        "offline_store": {"type": "file"},
        "online_store": {"type": "sqlite", "path": "/mnt/pvc/churn-models/feast/online.db"},
        "entity_key_serialization_version": 3,
    }


@pytest.mark.parametrize(("online", "expected"), [
    ({"type": "sqlite", "path": None}, {"type": "sqlite", "path": "/tmp/feast/online.db"}),
    ({"type": "sqlite", "path": "/data/online.db"}, {"type": "sqlite", "path": "/data/online.db"}),
    ({"type": "redis", "path": None, "connectionString": "redis.mlcycle-system.svc:6379"},
     {"type": "redis", "connection_string": "redis.mlcycle-system.svc:6379"}),
])
def test_feature_store_yaml_online_stores(online, expected):
    spec = project_spec(featureStore={"onlineStore": online})
    assert yaml.safe_load(project.feature_store_yaml(spec))["online_store"] == expected


def test_feature_store_config_map_holds_the_yaml():
    spec = project_spec()
    config_map = project.feature_store_config_map(spec, PROJECT_META)
    assert name_of(config_map) == project.feature_store_config_map_name("churn")
    assert config_map["data"] == {"feature_store.yaml": project.feature_store_yaml(spec)}


def test_no_feature_store_means_no_config_map_and_no_cron_job():
    spec = project_spec(**NO_FEATURE_STORE)
    assert project.feature_store_config_map(spec, PROJECT_META) is None
    assert project.materialization_cron_job(spec, PROJECT_META, IMAGE) is None


def test_materialization_disabled_means_no_cron_job():
    spec = project_spec(featureStore={"materialization": {"enabled": False}})
    assert project.materialization_cron_job(spec, PROJECT_META, IMAGE) is None
    assert project.feature_store_config_map(spec, PROJECT_META) is not None


def test_materialization_cron_job_runs_on_the_schedule_one_at_a_time():
    cron = project.materialization_cron_job(project_spec(), PROJECT_META, IMAGE)
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    [container] = containers(cron)
    assert container["image"] == IMAGE
    assert container["command"][-2:] == ["--repo", "/etc/feast"]
    assert pod_specs(cron)[0]["restartPolicy"] == "Never"


def test_materialization_with_gpu_defaults_stays_schedulable():
    cron = project.materialization_cron_job(project_spec(defaults={"resources": {"gpu": 1}}), PROJECT_META, IMAGE)
    [pod] = pod_specs(cron)
    wants_gpu = GPU in pod["containers"][0]["resources"]["limits"]
    assert wants_gpu == ({"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod.get("tolerations", []))


# --- TrainingJob ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "objective", "metric", "mode"), [
    pytest.param({}, {}, "roc_auc", "max", id="tuning-from-example"),
    pytest.param({"tuning": None}, {}, "roc_auc", "max", id="objective-maximize"),
    pytest.param({"tuning": None}, {"name": "rmse", "direction": "minimize"}, "rmse", "min",
                 id="objective-minimize"),
    pytest.param({"tuning": {"metric": "f1", "mode": "min"}}, {}, "f1", "min", id="tuning-overrides"),
    pytest.param({"tuning": {"metric": None, "mode": None}}, {"name": "log_loss", "direction": "minimize"},
                 "log_loss", "min", id="tuning-without-metric"),
    pytest.param({"tuning": {"metric": None, "mode": "min"}}, {}, "roc_auc", "min", id="tuning-mode-only"),
])
def test_training_config_metric_and_mode(changes, objective, metric, mode):
    p = project_spec(objective={"metric": objective}) if objective else project_spec()
    spec = job_spec(**changes)
    config = training.training_config(spec, JOB_META, p, None)
    assert (config["metric"], config["mode"]) == (metric, mode)
    # What the trainer reads is exactly this, through the ConfigMap.
    assert config_data(training.config_map(spec, JOB_META, config)) == json.loads(json.dumps(config))


def test_training_config_carries_what_the_operator_resolved():
    champion = {"model": "churn-classifier", "version": "7", "uri": "pvc://churn-models/x"}
    config = training.training_config(job_spec(), JOB_META, project_spec(), champion)
    assert config["name"] == "churn-v1"
    assert config["namespace"] == NAMESPACE
    assert config["project"] == "churn"
    assert config["spec"]["output"]["modelName"] == "churn-classifier"
    assert config["spec"]["data"]["featureService"] == "churn_features"
    assert config["objective"] == {"name": "roc_auc", "direction": "maximize", "threshold": 0.75}
    assert config["storage"] == {"uri": "pvc://churn-models/artifacts", "modelPath": "churn/models/churn-classifier"}
    assert config["featureStore"] == {"repoPath": "/etc/feast"}
    assert config["champion"] == champion
    assert config["report"] == {"statusField": "result"}


def test_training_without_feature_store():
    p = project_spec(**NO_FEATURE_STORE)
    spec = job_spec()
    assert training.training_config(spec, JOB_META, p, None)["featureStore"] is None
    for build in (training.batch_job, training.ray_job):
        for pod in pod_specs(build(spec, JOB_META, p, IMAGE)):
            assert volume_for(pod, "/etc/feast") is None


@pytest.mark.parametrize("build", [training.batch_job, training.ray_job])
def test_training_with_feature_store_mounts_it(build):
    for pod in pod_specs(build(job_spec(), JOB_META, project_spec(), IMAGE)):
        assert volume_for(pod, "/etc/feast")["configMap"]["name"] == project.feature_store_config_map_name("churn")


@pytest.mark.parametrize(("distribution", "cpu", "memory", "gpus"), [
    ({"workers": 1, "cpuPerWorker": 1, "memoryPerWorker": "2Gi"}, 1, "2Gi", 0),
    ({"workers": 3, "cpuPerWorker": 1, "memoryPerWorker": "2Gi"}, 3, "6Gi", 0),
    ({"workers": 3, "cpuPerWorker": 0.5, "memoryPerWorker": "1.5Gi", "gpuPerWorker": 1}, 1.5, "4.5Gi", 3),
    ({"workers": 4, "cpuPerWorker": 2, "memoryPerWorker": "512Mi"}, 8, "2Gi", 0),
])
def test_the_batch_job_pod_gets_the_sum_of_its_workers(distribution, cpu, memory, gpus):
    job = training.batch_job(job_spec(distribution=distribution), JOB_META, project_spec(), IMAGE)
    [resources] = [c["resources"] for c in containers(job)]
    for section in ("requests", "limits"):
        assert parse_quantity(resources[section]["cpu"]) == cpu
        assert parse_quantity(resources[section]["memory"]) == parse_quantity(memory)
        assert int(resources[section].get(GPU, 0)) == gpus
    if distribution["memoryPerWorker"] == "2Gi" and distribution["workers"] == 3:
        assert resources["limits"]["memory"] == "6Gi"
    assert ("tolerations" in pod_specs(job)[0]) == (gpus > 0)


@pytest.mark.parametrize(("workers", "gpu_per_worker"), [(1, 0), (3, 0), (3, 1), (8, 2)])
def test_the_ray_job_has_one_head_without_cpus_for_ray_and_one_worker_pod_per_worker(workers, gpu_per_worker):
    distribution = {"workers": workers, "cpuPerWorker": 1, "memoryPerWorker": "2Gi", "gpuPerWorker": gpu_per_worker}
    ray_job = training.ray_job(job_spec(distribution=distribution), JOB_META, project_spec(), IMAGE)
    cluster = ray_job["spec"]["rayClusterSpec"]
    [group] = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == workers
    # The head offers Ray no CPU: trials and Ray Train workers can only land on the worker pods.
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [head] = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert GPU not in head["resources"]["limits"] and "tolerations" not in cluster["headGroupSpec"]["template"]["spec"]
    [worker] = group["template"]["spec"]["containers"]
    # The head also runs the trial's driver actors (the trainer pins them there): memoryPerWorker plus 1Gi.
    for resources in (head["resources"]["limits"], head["resources"]["requests"]):
        assert parse_quantity(resources["cpu"]) == 1 and resources["memory"] == "3Gi"
    worker_limits = worker["resources"]["limits"]
    assert parse_quantity(worker_limits["cpu"]) == 1 and worker_limits["memory"] == "2Gi"
    assert int(worker["resources"]["limits"].get(GPU, 0)) == gpu_per_worker
    assert ("tolerations" in group["template"]["spec"]) == (gpu_per_worker > 0)


@pytest.mark.parametrize(("memory", "head"), [("2Gi", "3Gi"), ("1536Mi", "2560Mi"), ("2G", "3001701Ki"),
                                              (4 * 2**30, "5Gi")])
def test_the_ray_head_gets_a_trials_memory_above_memory_per_worker_written_as_the_api_server_would(memory, head):
    spec = job_spec(distribution={"workers": 2, "memoryPerWorker": memory})
    head_container, worker = containers(training.ray_job(spec, JOB_META, project_spec(), IMAGE))
    assert head_container["resources"]["limits"]["memory"] == head_container["resources"]["requests"]["memory"] == head
    assert parse_quantity(worker["resources"]["limits"]["memory"]) == parse_quantity(memory)


def test_the_ray_job_runs_the_trainer_as_its_entrypoint():
    ray_job = training.ray_job(job_spec(distribution={"workers": 2}), JOB_META, project_spec(), IMAGE)
    assert ray_job["spec"]["entrypoint"] == " ".join(common.runtime_command("train"))
    assert ray_job["spec"]["shutdownAfterJobFinishes"] is True
    assert ray_job["spec"]["ttlSecondsAfterFinished"] == training.RAY_CLUSTER_TTL_SECONDS
    head, worker = containers(ray_job)
    assert (head["name"], worker["name"]) == ("ray-head", "ray-worker")
    assert "command" not in head and "command" not in worker  # KubeRay starts Ray itself
    for container in (head, worker):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_TMPDIR"].startswith("/tmp/")


def test_the_ray_jobs_submitter_is_a_small_restricted_pod_of_the_runtime_image():
    """KubeRay's submitter pod (ray job submit, then the job's logs) is ours to shape: without a template KubeRay
    gives it no security context and its own requests."""
    ray_job = training.ray_job(job_spec(distribution={"workers": 2}), JOB_META, project_spec(), IMAGE)
    template = ray_job["spec"]["submitterPodTemplate"]
    assert template["metadata"]["labels"][common.LABEL_COMPONENT] == training.SUBMITTER_COMPONENT
    [container] = template["spec"]["containers"]
    assert container["image"] == IMAGE and "command" not in container  # KubeRay writes `ray job submit ...`
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] == {"cpu": "100m", "memory": "512Mi"}
    assert template["spec"]["restartPolicy"] == "Never"
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]


@pytest.mark.parametrize(("deadline", "seconds"), [(None, 6 * 3600), ("90m", 5400), ("1h30m", 5400), ("45s", 45)])
@pytest.mark.parametrize("build", [training.batch_job, training.ray_job])
def test_active_deadline(build, deadline, seconds):
    spec = job_spec(activeDeadline=deadline) if deadline else job_spec()
    assert build(spec, JOB_META, project_spec(), IMAGE)["spec"]["activeDeadlineSeconds"] == seconds


@pytest.mark.parametrize("build", [training.batch_job, training.ray_job])
def test_backoff_limit(build):
    assert build(job_spec(backoffLimit=3), JOB_META, project_spec(), IMAGE)["spec"]["backoffLimit"] == 3
    assert build(job_spec(), JOB_META, project_spec(), IMAGE)["spec"]["backoffLimit"] == 0


@pytest.mark.parametrize("build", [training.batch_job, training.ray_job])
def test_the_workload_is_named_after_the_training_job(build):
    workload = build(job_spec(), JOB_META, project_spec(), IMAGE)
    assert name_of(workload) == training.workload_name("churn-v1") == "churn-v1-train"
    assert workload["metadata"]["labels"][common.LABEL_INSTANCE] == "churn-v1"
    assert workload["metadata"]["labels"][common.LABEL_OWNER_KIND] == "trainingjob"
    assert all(c["image"] == IMAGE for c in containers(workload))


@pytest.mark.parametrize(("cpu_per_worker", "workers", "canonical"), [(1, 1, "1"), (1, 3, "3"), (0.5, 1, "500m")])
def test_the_batch_job_survives_the_api_servers_quantity_round_trip(cpu_per_worker, workers, canonical):
    spec = job_spec(distribution={"workers": workers, "cpuPerWorker": cpu_per_worker})
    job = training.batch_job(spec, JOB_META, project_spec(), IMAGE)
    stored = copy.deepcopy(job)
    for section in ("requests", "limits"):
        stored["spec"]["template"]["spec"]["containers"][0]["resources"][section]["cpu"] = canonical
    assert action_for(job, stored) is Action.UNCHANGED


# --- ModelDeployment ----------------------------------------------------------------------------------------------


def version_children(spec: ModelDeploymentSpec | None = None, version: str = VERSION,
                     p: MLProjectSpec | None = None) -> dict[str, dict]:
    built = serving.children_for_version(spec or md_spec(), MD_META, version, MODEL_URI, p or project_spec(), IMAGE)
    return {c["kind"]: c for c in built}


def test_the_example_serves_a_version_with_hpa_and_pdb():
    children = version_children()
    assert list(children) == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    assert len({name_of(c) for c in children.values()}) == 1
    deployment, hpa = children["Deployment"], children["HorizontalPodAutoscaler"]
    assert "replicas" not in deployment["spec"], "the HPA owns replicas (it starts them at minReplicas)"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": name_of(deployment)}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]


def test_requests_per_second_autoscaling():
    spec = md_spec(serving={"autoscaling": {"targetRequestsPerSecond": 50}})
    spec.serving.autoscaling.target_cpu_utilization = None
    hpa = version_children(spec)["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "mlcycle_requests_per_second"}, "target": {"type": "AverageValue", "averageValue": "50"}}}]


@pytest.mark.parametrize("replicas", [0, 1, 3])
def test_autoscaling_disabled_means_no_hpa_and_the_spec_replicas(replicas):
    children = version_children(md_spec(serving={"autoscaling": {"enabled": False}, "replicas": replicas}))
    assert "HorizontalPodAutoscaler" not in children
    assert children["Deployment"]["spec"].get("replicas") == replicas  # None: the HPA's to set


@pytest.mark.parametrize(("serving_changes", "has_pdb"), [
    ({"autoscaling": {"enabled": False}, "replicas": 1}, False),
    ({"autoscaling": {"enabled": False}, "replicas": 2}, True),
    ({"autoscaling": {"enabled": False}, "replicas": 5}, True),
    ({"autoscaling": {"enabled": True, "minReplicas": 1}}, False),
    ({"autoscaling": {"enabled": True, "minReplicas": 2}}, True),
])
def test_a_pdb_only_with_more_than_one_replica(serving_changes, has_pdb):
    children = version_children(md_spec(serving=serving_changes))
    assert ("PodDisruptionBudget" in children) == has_pdb
    if has_pdb:
        pdb = children["PodDisruptionBudget"]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"] == children["Deployment"]["spec"]["selector"]


@pytest.mark.parametrize(("serving_changes", "spread"), [
    ({"autoscaling": {"enabled": False}, "replicas": 1}, False),
    ({"autoscaling": {"enabled": False}, "replicas": 3}, True),
    ({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}, True),  # one now, four later
    ({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 1}}, False),
])
def test_model_server_replicas_spread_over_nodes_when_there_can_be_several(serving_changes, spread):
    deployment = version_children(md_spec(serving=serving_changes))["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert ("topologySpreadConstraints" in pod) == spread
    if spread:
        [constraint] = pod["topologySpreadConstraints"]
        # A preference: pods sharing a ReadWriteOnce claim can only run on one node, and must still run.
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["topologyKey"] == "kubernetes.io/hostname" and constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_routers_spread_over_nodes_and_keep_one_through_a_drain():
    spec = md_spec()
    router = serving.router_deployment(spec, MD_META, project_spec(), IMAGE)
    [constraint] = router["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert constraint["labelSelector"]["matchLabels"] == router["spec"]["selector"]["matchLabels"]
    pdb = serving.router_pdb(spec, MD_META)
    assert name_of(pdb) == name_of(router) and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == router["spec"]["selector"]
    # The router's PDB selects no model server, so retiring a version never takes it along.
    assert pdb["spec"]["selector"]["matchLabels"] != version_children(spec)["PodDisruptionBudget"]["spec"][
        "selector"]["matchLabels"]
    single = serving.router_deployment(spec, MD_META, project_spec(), IMAGE, replicas=1)
    assert "topologySpreadConstraints" not in single["spec"]["template"]["spec"]
    assert serving.router_pdb(spec, MD_META, replicas=1) is None


@pytest.mark.parametrize(("resources", "gpus"), [({"cpu": "500m", "memory": "512Mi"}, 0),
                                                 ({"cpu": 4, "memory": "16Gi", "gpu": 1}, 1),
                                                 ({"cpu": 8, "memory": "32Gi", "gpu": 2}, 2)])
def test_gpu_serving_gets_gpu_limits_and_the_toleration(resources, gpus):
    deployment = version_children(md_spec(serving={"resources": resources}))["Deployment"]
    [container] = containers(deployment)
    pod = pod_specs(deployment)[0]
    if gpus:
        assert container["resources"]["limits"][GPU] == str(gpus)
        assert pod["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    else:
        assert GPU not in container["resources"]["limits"]
        assert GPU not in container["resources"]["requests"]
        assert "tolerations" not in pod
    assert container["resources"]["limits"]["memory"] == resources["memory"]


def _serving_pairs(spec: ModelDeploymentSpec) -> list[tuple[str, dict, dict]]:
    """(what, Deployment, Service) for every Deployment of a ModelDeployment and of a DriftMonitor."""
    p = project_spec()
    version = version_children(spec)
    return [
        ("model-server", version["Deployment"], version["Service"]),
        ("router", serving.router_deployment(spec, MD_META, p, IMAGE), serving.router_service(spec, MD_META)),
        ("drift-monitor", monitor.deployment(monitor_spec(), MON_META, "churn", p, IMAGE, "hash"),
         monitor.service(monitor_spec(), MON_META, "churn")),
    ]


SERVING_PAIRS = [pytest.param(d, s, id=what) for what, d, s in _serving_pairs(md_spec())]


@pytest.mark.parametrize(("deployment", "service"), SERVING_PAIRS)
def test_deployment_selector_is_a_subset_of_its_pod_labels(deployment, service):
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selects(selector, deployment_pod_labels(deployment))


@pytest.mark.parametrize(("deployment", "service"), SERVING_PAIRS)
def test_service_selects_the_deployments_pods_on_a_named_port(deployment, service):
    assert selects(service["spec"]["selector"], deployment_pod_labels(deployment))
    ports = {p["name"] for c in containers(deployment) for p in c.get("ports", [])}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports


def test_services_select_only_their_own_pods():
    pairs = _serving_pairs(md_spec())
    candidate = version_children(version=CANDIDATE)
    pairs.append(("candidate", candidate["Deployment"], candidate["Service"]))
    for what, _, service in pairs:
        for other, deployment, _ in pairs:
            if other != what:
                assert not selects(service["spec"]["selector"], deployment_pod_labels(deployment)), (what, other)


def test_the_deployment_rolls_without_losing_capacity_and_probes_the_server():
    deployment = version_children()["Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    [container] = containers(deployment)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": serving.SERVER_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": serving.SERVER_PORT}


def test_the_router_logs_predictions_only_when_asked_under_the_projects_storage_by_default():
    def log_config(**changes):
        built = serving.router_config_map(md_spec(**changes), MD_META, [], None, project_spec())
        return config_data(built).get("predictionLog")

    assert log_config() is None
    assert log_config(logging={"sampleRate": 0.25, "flushInterval": "2m"}, **ONLINE_FEATURES) == {
        "uri": project_spec().storage.uri.rstrip("/") + "/predictions", "sampleRate": 0.25, "flushSeconds": 120.0,
        "entityKeys": ["customer_id"]}
    assert log_config(logging={"uri": "s3://logs/churn", "entityKeys": ["account"]}) == {
        "uri": "s3://logs/churn", "sampleRate": 1.0, "flushSeconds": 60.0, "entityKeys": ["account"]}


@pytest.mark.parametrize(("cpu", "workers"), [("500m", 1), ("1", 1), ("1500m", 1), ("2", 2), ("4", 4), (3, 3)])
def test_a_model_server_runs_one_worker_per_whole_cpu_of_its_limit(cpu, workers):
    deployment = version_children(md_spec(serving={"resources": {"cpu": cpu}}))["Deployment"]
    [container] = containers(deployment)
    assert {"name": "MLCYCLE_SERVE_WORKERS", "value": str(workers)} in container["env"]
    assert container["resources"]["limits"]["cpu"] == str(cpu)


def test_a_model_server_with_a_gpu_is_told_to_score_on_it_and_one_without_is_not():
    def env(gpu: int) -> list[dict]:
        [container] = containers(version_children(md_spec(serving={"resources": {"gpu": gpu}}))["Deployment"])
        return container["env"]

    assert {"name": "MLCYCLE_DEVICE", "value": "cuda"} in env(1)
    assert not any(var["name"] == "MLCYCLE_DEVICE" for var in env(0))


def test_the_config_hash_annotation_follows_the_server_config():
    children = version_children()
    annotations = children["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[common.ANNOTATION_CONFIG_HASH] == common.content_hash(children["ConfigMap"]["data"][CONFIG_FILE])
    other = serving.children_for_version(md_spec(), MD_META, VERSION, MODEL_URI + "-retrained", project_spec(), IMAGE)
    assert other[1]["spec"]["template"]["metadata"]["annotations"][common.ANNOTATION_CONFIG_HASH] != \
        annotations[common.ANNOTATION_CONFIG_HASH]


def test_the_server_config_names_the_model_version():
    config = config_data(version_children()["ConfigMap"])
    assert config["model"] == {"name": "churn-classifier", "version": VERSION, "uri": MODEL_URI}
    assert config["port"] == serving.SERVER_PORT
    assert config["batching"] == {"enabled": True, "maxBatchSize": 32, "maxLatencyMs": 5}
    assert config["onlineFeatures"] is None
    assert config["featureStore"] is None


@pytest.mark.parametrize(("project_changes", "mounted"), [({}, True), (NO_FEATURE_STORE, False)])
def test_online_features_mount_the_feature_store_when_the_project_has_one(project_changes, mounted):
    children = version_children(md_spec(**ONLINE_FEATURES), p=project_spec(**project_changes))
    config = config_data(children["ConfigMap"])
    assert config["onlineFeatures"] == {"featureService": "churn_features", "entityKeys": ["customer_id"]}
    volume = volume_for(pod_specs(children["Deployment"])[0], "/etc/feast")
    assert (volume is not None) == mounted


def test_version_names_and_labels_differ_per_version():
    stable, candidate = version_children(), version_children(version=CANDIDATE)
    assert name_of(stable["Deployment"]) != name_of(candidate["Deployment"])
    assert deployment_pod_labels(stable["Deployment"])[common.LABEL_VERSION] == VERSION
    assert deployment_pod_labels(candidate["Deployment"])[common.LABEL_VERSION] == CANDIDATE


@pytest.mark.parametrize("traffic", [
    pytest.param([VersionTraffic(version=VERSION, weight=100, role="stable")], id="stable-only"),
    pytest.param(TRAFFIC, id="canary"),
    pytest.param([VersionTraffic(version=VERSION, weight=100, role="stable"),
                  VersionTraffic(version=CANDIDATE, weight=0, role="candidate", shadow_percent=20)], id="shadow"),
])
def test_router_routes_follow_the_traffic(traffic):
    config_map = serving.router_config_map(md_spec(), MD_META, traffic, MODEL_URI)
    assert name_of(config_map) == name_of(serving.router_deployment(md_spec(), MD_META, project_spec(), IMAGE))
    config = config_data(config_map)
    assert config["referenceUri"] == MODEL_URI
    assert [(r["version"], r["weight"], r["role"], r["shadowPercent"]) for r in config["routes"]] == [
        (t.version, t.weight, t.role, t.shadow_percent) for t in traffic]
    for route in config["routes"]:
        service = version_children(version=route["version"])["Service"]
        port = service["spec"]["ports"][0]["port"]
        assert route["url"] == f"http://{name_of(service)}.{NAMESPACE}.svc:{port}"


def test_the_router_service_is_the_stable_endpoint():
    service = serving.router_service(md_spec(), MD_META)
    assert name_of(service) == "churn"
    assert serving.endpoint(MD_META) == f"http://churn.{NAMESPACE}.svc"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_the_service_monitor_selects_the_deployments_services():
    selector = serving.service_monitor(md_spec(), MD_META)["spec"]["selector"]["matchLabels"]
    services = [version_children()["Service"], serving.router_service(md_spec(), MD_META)]
    for service in services:
        assert selects(selector, service["metadata"]["labels"])
    assert not selects(selector, monitor.service(monitor_spec(), MON_META, "churn")["metadata"]["labels"])


# --- DriftMonitor -------------------------------------------------------------------------------------------------


def monitor_children(spec: DriftMonitorSpec | None = None, with_rule: bool = True) -> dict[str, dict]:
    spec = spec or monitor_spec()
    config = monitor.monitor_config(spec, MON_META, {"stableVersion": VERSION}, "http://prometheus:9090", MODEL_URI)
    return {c["kind"]: c for c in monitor.children(spec, MON_META, "churn", project_spec(), IMAGE, config, with_rule)}


def test_the_example_monitor_children():
    children = monitor_children()
    assert list(children) == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PrometheusRule"]
    # The example monitor autoscales (1..3), so its HPA owns replicas.
    assert "replicas" not in children["Deployment"]["spec"]
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert hpa["scaleTargetRef"]["name"] == name_of(children["Deployment"])
    annotations = children["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations[common.ANNOTATION_CONFIG_HASH] == common.content_hash(children["ConfigMap"]["data"][CONFIG_FILE])


@pytest.mark.parametrize(("autoscaling", "has_hpa", "replicas"), [
    ({"minReplicas": 2, "maxReplicas": 2}, False, 2), ({"minReplicas": 2, "maxReplicas": 5}, True, None)])
def test_the_monitor_hpa_only_when_it_can_scale(autoscaling, has_hpa, replicas):
    children = monitor_children(monitor_spec(autoscaling=autoscaling))
    assert ("HorizontalPodAutoscaler" in children) == has_hpa
    assert children["Deployment"]["spec"].get("replicas") == replicas  # None: the HPA's to set


@pytest.mark.parametrize(("alerting", "with_rule", "has_rule"), [
    ({}, True, True), ({}, False, False), ({"enabled": False}, True, False)])
def test_the_prometheus_rule_only_when_alerting_and_its_crd_exists(alerting, with_rule, has_rule):
    children = monitor_children(monitor_spec(alerting=alerting), with_rule)
    assert ("PrometheusRule" in children) == has_rule
    if has_rule:
        [rule] = children["PrometheusRule"]["spec"]["groups"][0]["rules"]
        assert rule["for"] == "10m"
        assert rule["labels"] == {"severity": "warning"}
        assert 'monitor="churn"' in rule["expr"]


def test_the_monitor_config_names_its_deployment_reference_and_prometheus():
    config = config_data(monitor_children()["ConfigMap"])
    assert config["deployment"] == "churn"
    assert config["version"] == VERSION
    assert config["referenceUri"] == MODEL_URI
    assert config["prometheusUrl"] == "http://prometheus:9090"
    assert "routerMetrics" not in config  # the monitor reads the router's series from Prometheus only
    assert config["spec"]["minSamples"] == 500
    assert config["report"] == {"statusField": "report"}


@pytest.mark.parametrize("which", ["model-server", "drift-monitor"])
def test_a_deployment_scaled_by_its_hpa_is_left_alone(which):
    children = version_children() if which == "model-server" else monitor_children()
    deployment, hpa = children["Deployment"], children["HorizontalPodAutoscaler"]
    scaled = copy.deepcopy(deployment)
    scaled["spec"]["replicas"] = hpa["spec"]["maxReplicas"]
    assert action_for(deployment, scaled) is Action.UNCHANGED


# --- retraining_job -----------------------------------------------------------------------------------------------


def source_job() -> dict:
    return {
        "apiVersion": "mlcycle.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "churn-v1", "namespace": NAMESPACE, "uid": "src",
            "labels": {**TRAINING_DOC["metadata"]["labels"], "team": "retention",
                       "app.kubernetes.io/name": "churn", "app.kubernetes.io/part-of": "retention",
                       monitor.LABEL_RETRAIN_OF: "some-other-monitor"},
        },
        "spec": copy.deepcopy(TRAINING_DOC["spec"]),
        "status": {"phase": "Succeeded"},
    }


def test_retraining_clones_the_source_spec_and_tracking_labels():
    source = source_job()
    job = monitor.retraining_job(monitor_spec(), MON_META, source, "churn-retrain-20250301-120000", "drift on x=0.3")
    assert job["apiVersion"] == "mlcycle.io/v1alpha1"
    assert job["kind"] == "TrainingJob"
    assert job["metadata"]["name"] == "churn-retrain-20250301-120000"
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["spec"] == TRAINING_DOC["spec"]
    assert job["metadata"]["labels"] == {"mlcycle.io/model": "churn-classifier", "team": "retention",
                                         monitor.LABEL_RETRAIN_OF: "churn"}
    assert job["metadata"]["annotations"] == {"mlcycle.io/retrain-reason": "drift on x=0.3"}
    assert "status" not in job
    job["spec"]["model"]["params"]["eta"] = 1
    assert source["spec"] == TRAINING_DOC["spec"]  # a clone, not a reference


def test_retraining_uses_the_template_when_given():
    template = merged(TRAINING_DOC["spec"], {"tuning": {"numSamples": 32}, "output": {"modelName": "churn-v2"}})
    spec = monitor_spec(actions={"retrain": {"template": template}})
    job = monitor.retraining_job(spec, MON_META, source_job(), "churn-retrain-1", "drift")
    assert job["spec"] == template
    assert job["spec"] is not spec.actions.retrain.template
    assert job["metadata"]["labels"][monitor.LABEL_RETRAIN_OF] == "churn"
    assert not any(k.startswith("app.kubernetes.io/") for k in job["metadata"]["labels"])


def test_retraining_from_a_template_needs_no_source():
    spec = monitor_spec(actions={"retrain": {"template": TRAINING_DOC["spec"]}})
    assert monitor.retraining_job(spec, MON_META, None, "churn-retrain-1", "drift")["spec"] == TRAINING_DOC["spec"]


def test_a_templated_retraining_keeps_the_tracking_labels_of_the_model_in_service():
    spec = monitor_spec(actions={"retrain": {"template": TRAINING_DOC["spec"]}})
    job = monitor.retraining_job(spec, MON_META, source_job(), "churn-retrain-1", "drift")
    assert job["metadata"]["labels"].get("mlcycle.io/model") == "churn-classifier"


def test_retraining_without_template_or_source_is_an_error():
    with pytest.raises(ValueError, match="no retraining template"):
        monitor.retraining_job(monitor_spec(), MON_META, None, "churn-retrain-1", "drift")


def test_the_retrain_reason_annotation_is_bounded():
    job = monitor.retraining_job(monitor_spec(), MON_META, source_job(), "churn-retrain-1", "x" * 5000)
    assert len(job["metadata"]["annotations"]["mlcycle.io/retrain-reason"]) == 1000


# --- names ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("parts", "expected"), [
    (("churn", "train"), "churn-train"),
    (("Churn_Model", "v", "1.2.3"), "churn-model-v-1-2-3"),
    (("-churn", "router-"), "churn-router"),
    ((".churn", "router"), "churn-router"),
    (("a" * 30, "b" * 32), "a" * 30 + "-" + "b" * 32),  # exactly 63: kept as is
])
def test_child_name_of_short_parts(parts, expected):
    assert common.child_name(*parts) == expected


@pytest.mark.parametrize("length", [64, 70, 120, 253])
def test_child_name_of_long_parts_stays_a_dns_label_with_a_hash(length):
    name = common.child_name("m" * length, "retrain")
    assert len(name) <= 63
    assert DNS_LABEL.match(name)
    assert re.search(r"-[0-9a-f]{8}$", name)
    assert common.child_name("m" * length, "retrain") == name  # stable across calls


def test_long_names_that_differ_only_at_the_end_stay_distinct():
    names = {common.child_name("x" * 80, suffix) for suffix in ("train", "train-config", "drift", "router")}
    assert len(names) == 4
    assert all(len(n) <= 63 for n in names)


def test_a_name_cut_at_a_dash_gets_no_double_dash():
    name = common.child_name("a" * 53 + "-" + "b" * 20)
    assert "--" not in name
    assert DNS_LABEL.match(name)


def test_child_name_respects_a_smaller_limit():
    name = common.child_name("y" * 100, limit=40)
    assert len(name) <= 40
    assert DNS_LABEL.match(name)


def test_builders_shorten_names_from_long_owners_and_versions():
    long_job = "churn-" + "nightly-" * 9 + "run"
    long_version = "2025-03-01T12:00:00-" + "f" * 60
    names = [
        training.workload_name(long_job),
        training.config_map_name(long_job),
        serving.version_name("churn", long_version),
        serving.router_name("r" * 70),
        monitor.monitor_name("m" * 70),
        project.workload_service_account_name("p" * 63),
        project.feature_store_config_map_name("p" * 63),
    ]
    for name in names:
        assert len(name) <= 63
        assert DNS_LABEL.match(name)
    assert training.workload_name(long_job) != training.config_map_name(long_job)
    deployment = version_children(version=long_version)["Deployment"]
    assert len(deployment_pod_labels(deployment)[common.LABEL_VERSION]) <= 63


def test_the_longest_owner_name_the_api_allows_still_gives_valid_names_and_label_values():
    # The CRDs refuse names over 63 characters (crd.py), since they become Service names and label values.
    meta = Meta(name=("churn-" + "production-" * 6)[:63], namespace=NAMESPACE)
    spec = md_spec()
    built = [*serving.children_for_version(spec, meta, VERSION, MODEL_URI, project_spec(), IMAGE),
             serving.router_deployment(spec, meta, project_spec(), IMAGE), serving.router_service(spec, meta)]
    for obj in built:
        assert len(name_of(obj)) <= 63
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values())


@pytest.mark.parametrize(("kuberay_namespace", "namespace_selector"), [
    ("", {}), ("kuberay-system", {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}})])
def test_a_ray_jobs_network_policy_opens_the_dashboard_to_its_submitter_and_kuberay_only(kuberay_namespace,
                                                                                       namespace_selector):
    spec = job_spec(distribution={"workers": 2})
    ray_job = training.ray_job(spec, JOB_META, project_spec(), IMAGE)
    policy = training.ray_network_policy(spec, JOB_META, kuberay_namespace)
    selects = policy["spec"]["podSelector"]["matchLabels"]

    def selected(labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in selects.items())

    cluster = ray_job["spec"]["rayClusterSpec"]
    head, workers = cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]
    submitter = ray_job["spec"]["submitterPodTemplate"]
    assert selected(head["metadata"]["labels"]) and selected(workers["metadata"]["labels"])
    assert not selected(submitter["metadata"]["labels"])  # it takes no connections
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    among, dashboard = policy["spec"]["ingress"]
    assert among == {"from": [{"podSelector": {"matchLabels": selects}}]}  # Ray's own traffic, any port
    assert dashboard["ports"] == [{"protocol": "TCP", "port": 8265}]
    by_submitter, by_kuberay = dashboard["from"]
    assert all(submitter["metadata"]["labels"].get(k) == v
               for k, v in by_submitter["podSelector"]["matchLabels"].items())
    assert by_kuberay == {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "kuberay-operator"}},
                          "namespaceSelector": namespace_selector}
    # The submitter reaches the dashboard that KubeRay's Service points at: the head's, bound to every address.
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
