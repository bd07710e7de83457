"""The Helm chart, rendered by the real helm binary: restricted pods, least-privilege RBAC that matches what the
operator does, standard labels, documented and schema-checked values. No cluster (tests/integration/test_chart.py
installs it)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from mlcycle_operator import kube
from mlcycle_operator.handlers._cache import CHILD_KINDS
from mlcycle_operator.resources import project
from mlcycle_operator.resources.common import Meta
from tests.harness import binaries
from tests.harness.pytest_support import unavailable

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlcycle"
NAMESPACE = "mlcycle-system"
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
# (id, helm arguments): the defaults, and each ci/ values file with every API it may use.
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
VALUE_SETS = [("defaults", []),
              *((path.stem, ["-f", str(path), "--api-versions", SERVICE_MONITOR_API]) for path in CI_VALUES)]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                   "helm.sh/chart")
RESTRICTED = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}


@pytest.fixture(scope="module")
def helm() -> Path:
    path = binaries.install_dir(binaries.COMPONENTS["helm"]) / "helm"
    if not path.exists():
        unavailable("helm", f"{path} is not built (make binaries)")
    return path


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def render(helm: Path, *args: str, release: str = "mlcycle", namespace: str = NAMESPACE) -> list[dict]:
    result = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=VALUE_SETS, ids=[name for name, _ in VALUE_SETS])
def rendered(request: pytest.FixtureRequest, helm: Path) -> list[dict]:
    return render(helm, *request.param[1])


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "Pod":
        return spec
    if workload["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    return spec["template"]["spec"]


def operator_container(docs: list[dict]) -> dict:
    (deployment,) = [d for d in find(docs, "Deployment")
                     if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# The cluster-scoped resources the chart's roles name: a RoleBinding grants none of them, whatever its role says.
CLUSTER_SCOPED = {"clusterkopfpeerings", "namespaces", "customresourcedefinitions"}


def bound_rules(docs: list[dict]) -> list[dict]:
    """What the operator's ServiceAccount may do, as the API server reads its bindings: every rule of a ClusterRole
    bound cluster-wide, and the namespaced resources of one bound by a RoleBinding."""
    roles = {r["metadata"]["name"]: r for r in find(docs, "ClusterRole")}
    rules = []
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        if any(s["name"] == "mlcycle" and s["kind"] == "ServiceAccount" for s in binding["subjects"]):
            for rule in roles[binding["roleRef"]["name"]]["rules"]:
                if binding["kind"] == "RoleBinding":
                    rule = {**rule, "resources": [r for r in rule["resources"] if r not in CLUSTER_SCOPED]}
                rules.append(rule)
    return rules


def allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r["verbs"]
               for r in rules)


# --- pods ---------------------------------------------------------------------------------------------------


def test_every_container_runs_restricted_with_resources(rendered):
    workloads = [d for d in rendered if d["kind"] in WORKLOAD_KINDS]
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload['kind']}/{workload['metadata']['name']} container {container['name']}"
            security = container.get("securityContext", {})
            for key, value in RESTRICTED.items():
                assert security.get(key) == value, f"{where}: securityContext.{key} should be {value}"
            assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: must drop ALL capabilities"
            assert security.get("privileged") is not True, where
            seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, f"{where}: seccompProfile"
            uid = security.get("runAsUser", pod_security.get("runAsUser"))
            assert uid not in (None, 0), f"{where}: runs as uid {uid}"
            for amounts in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container.get("resources", {}).get(amounts, {})), \
                    f"{where}: resources.{amounts} needs cpu and memory"


def test_long_running_containers_have_probes_and_a_writable_tmp(rendered):
    for deployment in find(rendered, "Deployment"):
        spec = pod_spec(deployment)
        for container in spec["containers"]:
            where = f"Deployment/{deployment['metadata']['name']} container {container['name']}"
            assert "httpGet" in container.get("livenessProbe", {}), f"{where}: livenessProbe"
            assert "httpGet" in container.get("readinessProbe", {}), f"{where}: readinessProbe"
            # A read-only root filesystem needs somewhere to write.
            writable = {m["mountPath"] for m in container.get("volumeMounts", []) if not m.get("readOnly")}
            assert writable, f"{where}: no writable volume next to a read-only root filesystem"


def test_operator_container_matches_the_operator(rendered):
    """What mlcycle_operator/__main__.py and config.py read: the command, MLCYCLE_* variables, two ports."""
    container = operator_container(rendered)
    assert container["command"] == ["python", "-m", "mlcycle_operator"]
    env = env_of(container)
    assert {"MLCYCLE_PROMETHEUS_URL", "MLCYCLE_WATCH_NAMESPACES", "MLCYCLE_LOG_LEVEL", "MLCYCLE_RUNTIME_IMAGE",
            "MLCYCLE_METRICS_PORT", "MLCYCLE_HEALTH_PORT", "MLCYCLE_PEERING", "POD_ID"} <= set(env)
    from mlcycle_operator.config import Config

    config = Config.from_env({k: v for k, v in env.items() if v is not None})
    assert config.log_level in ("INFO", "DEBUG")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": config.metrics_port, "health": config.health_port} == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    (deployment,) = find(rendered, "Deployment", "mlcycle")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8080"
    (service,) = find(rendered, "Service", "mlcycle-metrics")
    assert service["spec"]["ports"] == [{"name": "http-metrics", "port": 8080, "targetPort": "metrics",
                                         "protocol": "TCP"}]


def test_default_images_and_settings(helm):
    docs = render(helm)
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/mlcycle/operator:0.1.0"
    env = env_of(container)
    assert env["MLCYCLE_RUNTIME_IMAGE"] == "ghcr.io/mlcycle/runtime:0.1.0"
    assert env["MLCYCLE_WATCH_NAMESPACES"] == "" and env["MLCYCLE_LOG_LEVEL"] == "INFO"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}}
    assert find(docs, "Deployment", "mlcycle")[0]["spec"]["replicas"] == 1


def test_images_by_digest_ignore_the_tag(helm):
    operator, runtime = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    container = operator_container(render(helm, "--set", f"image.digest={operator}", "--set", "image.tag=9.9",
                                          "--set", f"runtimeImage.digest={runtime}"))
    assert container["image"] == f"ghcr.io/mlcycle/operator@{operator}"
    assert env_of(container)["MLCYCLE_RUNTIME_IMAGE"] == f"ghcr.io/mlcycle/runtime@{runtime}"


def test_several_replicas_without_peering_are_refused(helm):
    """Without Kopf peering every replica reconciles everything at once: refused at install, saying why."""
    result = run_helm(helm, "template", "mlcycle", str(CHART), "--set", "replicaCount=2",
                      "--set", "peering.enabled=false")
    assert result.returncode != 0
    assert "replicaCount 2 needs peering.enabled" in result.stderr, result.stderr
    assert render(helm, "--set", "replicaCount=1", "--set", "peering.enabled=false")


@pytest.mark.parametrize(("args", "url"), [
    ([], ""),
    (["--set", "prometheus.enabled=true"], f"http://mlcycle-prometheus.{NAMESPACE}.svc:9090"),
    (["--set", "prometheus.enabled=true", "--set", "prometheus.url=http://prom.monitoring:9090"],
     "http://prom.monitoring:9090"),
])
def test_prometheus_url(helm, args, url):
    docs = render(helm, *args)
    assert env_of(operator_container(docs))["MLCYCLE_PROMETHEUS_URL"] == url
    assert bool(find(docs, "Deployment", "mlcycle-prometheus")) == ("--set" in args)


def test_in_chart_prometheus_scrapes_annotated_pods(helm):
    docs = render(helm, "--set", "prometheus.enabled=true")
    (config_map,) = find(docs, "ConfigMap", "mlcycle-prometheus")
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    keep = job["relabel_configs"][0]
    assert keep == {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                    "action": "keep", "regex": "true"}
    (deployment,) = find(docs, "Deployment", "mlcycle-prometheus")
    mounts = {m["mountPath"] for m in pod_spec(deployment)["containers"][0]["volumeMounts"]}
    assert {"/prometheus", "/etc/prometheus"} <= mounts
    (role,) = find(docs, "ClusterRole", f"{NAMESPACE}-mlcycle-prometheus")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_pod_disruption_budget_only_with_several_replicas(helm):
    assert not find(render(helm), "PodDisruptionBudget")
    (pdb,) = find(render(helm, "--set", "replicaCount=3"), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


def test_service_monitor_only_where_the_api_is_served(helm):
    assert not find(render(helm, "--set", "serviceMonitor.enabled=true"), "ServiceMonitor")
    (monitor,) = find(render(helm, "--set", "serviceMonitor.enabled=true", "--api-versions", SERVICE_MONITOR_API),
                      "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"


# --- RBAC -----------------------------------------------------------------------------------------------------


def test_cluster_roles_grant_no_wildcards_and_no_secrets(rendered):
    for role in find(rendered, "ClusterRole") + find(rendered, "Role"):
        for rule in role["rules"]:
            where = f"{role['kind']}/{role['metadata']['name']} rule {rule}"
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in rule.get(field, []), f"{where}: wildcard in {field}"
            assert not {"secrets", "secrets/*"} & set(rule.get("resources", [])), f"{where}: Secrets"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), f"{where}: privilege verbs"
            assert not rule.get("nonResourceURLs"), where


# The API group of each kind the operator reads or writes (kube.PLURALS); a kind added there must be added here
# and to templates/clusterrole.yaml.
GROUPS = {
    "ConfigMap": "", "Service": "", "ServiceAccount": "", "PersistentVolumeClaim": "", "Pod": "", "Event": "",
    "Role": "rbac.authorization.k8s.io", "RoleBinding": "rbac.authorization.k8s.io",
    "Deployment": "apps", "Job": "batch", "CronJob": "batch",
    "HorizontalPodAutoscaler": "autoscaling", "PodDisruptionBudget": "policy",
    "RayJob": "ray.io", "NetworkPolicy": "networking.k8s.io", "ServiceMonitor": "monitoring.coreos.com",
    "PrometheusRule": "monitoring.coreos.com",
    "MLProject": "mlcycle.io", "TrainingJob": "mlcycle.io", "ModelDeployment": "mlcycle.io",
    "DriftMonitor": "mlcycle.io", "BatchPrediction": "mlcycle.io",
}
# What the operator does with each kind: kube.py issues get/list/create/patch/delete (never update); Kopf
# lists, watches and patches the four mlcycle kinds and watches the children it caches (handlers/_cache.py);
# pods are only read, Events posted and listed (why a model-store claim is Pending), and the only mlcycle object
# the operator creates is a retraining
# TrainingJob. The optional APIs (RayJob, ServiceMonitor, PrometheusRule) are not cached, so not watched.
CHILD_VERBS = {"get", "list", "create", "patch", "delete"}
VERBS = {
    **{kind: CHILD_VERBS | {"watch"} for kind in CHILD_KINDS},
    "Pod": {"get", "list"},
    "Event": {"create", "list"},
    "MLProject": {"get", "list", "watch", "patch"},
    "TrainingJob": {"get", "list", "watch", "patch", "create"},
    "ModelDeployment": {"get", "list", "watch", "patch"},
    "DriftMonitor": {"get", "list", "watch", "patch"},
    "BatchPrediction": {"get", "list", "watch", "patch"},
}


def test_operator_may_do_everything_it_does(helm):
    rules = bound_rules(render(helm))
    assert set(kube.PLURALS) == set(GROUPS), "a kind was added to kube.PLURALS: grant it in the chart and list it here"
    for kind, plural in kube.PLURALS.items():
        for verb in VERBS.get(kind, CHILD_VERBS):
            assert allows(rules, GROUPS[kind], plural, verb), f"the operator cannot {verb} {plural}"
    for plural in ("mlprojects", "trainingjobs", "modeldeployments", "driftmonitors", "batchpredictions"):
        assert allows(rules, "mlcycle.io", f"{plural}/status", "patch")
    # Kopf itself: observing CRDs and namespaces, and peering.
    for group, resource, verbs in (("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")),
                                   ("", "namespaces", ("list", "watch")),
                                   ("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch")),
                                   ("kopf.dev", "kopfpeerings", ("list", "watch", "patch"))):
        for verb in verbs:
            assert allows(rules, group, resource, verb), f"Kopf cannot {verb} {resource}"


def test_operator_may_do_nothing_more(helm):
    """Least privilege: every granted (group, resource, verb) is one the operator or Kopf uses, or one the
    workload Role grants (the operator can grant only what it holds)."""
    needed = {(GROUPS[kind], plural, verb) for kind, plural in kube.PLURALS.items()
              for verb in VERBS.get(kind, CHILD_VERBS)}
    needed |= {("mlcycle.io", f"{p}/status", "patch")
               for p in ("mlprojects", "trainingjobs", "modeldeployments", "driftmonitors", "batchpredictions")}
    needed |= {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    needed |= {("", "namespaces", v) for v in ("list", "watch")}
    needed |= {("kopf.dev", r, v) for r in ("clusterkopfpeerings", "kopfpeerings") for v in ("get", "list", "watch",
                                                                                             "patch")}
    needed |= {(g, r, v) for rule in workload_role()["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    granted = {(g, r, v) for rule in bound_rules(render(helm)) for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted - needed == set(), "granted but never used"


def workload_role() -> dict:
    from mlcycle_operator.api.mlproject import MLProjectSpec

    example = yaml.safe_load((ROOT / "examples" / "churn" / "manifests" / "01-mlproject.yaml").read_text())
    spec = MLProjectSpec.model_validate(example["spec"])
    return project.workload_role(spec, Meta(name="churn", namespace="ml"))


def test_operator_holds_every_permission_of_the_workload_role_it_grants(helm):
    """RBAC escalation prevention: creating a Role that grants what the creator lacks is refused (the operator
    has no `escalate`), so the per-project workload Role must be covered by the operator's own rules."""
    rules = bound_rules(render(helm))
    for rule in workload_role()["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert allows(rules, group, resource, verb), \
                        f"the workload Role grants {verb} {group}/{resource}, which the operator does not hold"


def test_watch_namespaces_grants_only_in_those_namespaces(helm):
    docs = render(helm, "--set", "watchNamespaces={team-a,team-b}", "--set", "prometheus.enabled=true")
    env = env_of(operator_container(docs))
    assert env["MLCYCLE_WATCH_NAMESPACES"] == "team-a,team-b"
    namespaced_role = f"{NAMESPACE}-mlcycle"
    assert [b["roleRef"]["name"] for b in find(docs, "ClusterRoleBinding")] == [f"{namespaced_role}-cluster"]
    bindings = [b for b in find(docs, "RoleBinding") if b["roleRef"]["name"] == namespaced_role]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    peerings = find(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {env["MLCYCLE_PEERING"]}
    assert not find(docs, "ClusterKopfPeering")
    # Nothing cluster-wide beyond what Kopf uses whatever it watches: no ClusterKopfPeering, no namespaced kind.
    rules = bound_rules(docs)
    assert not any(allows(rules, "kopf.dev", "clusterkopfpeerings", verb) for verb in ("get", "list", "patch"))
    cluster_wide = [rule for b in find(docs, "ClusterRoleBinding")
                    for rule in find(docs, "ClusterRole", b["roleRef"]["name"])[0]["rules"]]
    assert {r for rule in cluster_wide for r in rule["resources"]} == {"customresourcedefinitions", "namespaces"}
    # Prometheus reads pods where the operator works and in its own namespace, not cluster-wide.
    prometheus = [b for b in find(docs, "RoleBinding") if b["roleRef"]["name"].endswith("-prometheus")]
    assert sorted(b["metadata"]["namespace"] for b in prometheus) == sorted(["team-a", "team-b", NAMESPACE])


def test_cluster_scoped_names_differ_between_releases(helm):
    """Two releases (same name in two namespaces, or two names) never fight over a cluster-scoped object."""
    def cluster_scoped(docs):
        return {(d["kind"], d["metadata"]["name"]) for d in docs if "namespace" not in d["metadata"]}

    args = ("--set", "prometheus.enabled=true")
    first = cluster_scoped(render(helm, *args, release="mlcycle", namespace="a"))
    assert first and first.isdisjoint(cluster_scoped(render(helm, *args, release="mlcycle", namespace="b")))
    assert first.isdisjoint(cluster_scoped(render(helm, *args, release="other", namespace="a")))


def test_names_that_yaml_reads_as_booleans_stay_strings(helm):
    """Release `y` in namespace `no` watching `on`: YAML 1.1 reads these as booleans unless they are quoted."""
    docs = render(helm, "--set", "watchNamespaces={on}", "--set", "prometheus.enabled=true", release="y",
                  namespace="no")
    for doc in docs:
        meta = doc["metadata"]
        assert isinstance(meta.get("namespace", ""), str) and isinstance(meta["name"], str), meta
        assert all(isinstance(v, str) for v in meta["labels"].values()), meta["labels"]
        for subject in doc.get("subjects", []):
            assert isinstance(subject["namespace"], str), subject
    assert env_of(operator_container(docs))["MLCYCLE_WATCH_NAMESPACES"] == "on"


def test_rbac_rules_do_not_depend_on_values(helm):
    def rules(docs):
        return {r["metadata"]["name"]: r["rules"] for r in find(docs, "ClusterRole")
                if not r["metadata"]["name"].endswith("-prometheus")}

    assert rules(render(helm)) == rules(render(helm, "-f", str(CHART / "ci" / "ci-values.yaml")))


# --- CRDs ------------------------------------------------------------------------------------------------------


def test_crds_are_installed_from_crds_directories(helm):
    def crds(*args):
        return {d["metadata"]["name"] for d in render(helm, "--include-crds", *args)
                if d["kind"] == "CustomResourceDefinition"}

    mlcycle = {"mlprojects.mlcycle.io", "trainingjobs.mlcycle.io", "modeldeployments.mlcycle.io",
               "driftmonitors.mlcycle.io", "batchpredictions.mlcycle.io"}
    kopf = {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    assert crds() == mlcycle | kopf
    assert crds("--set", "peering.installCrds=false") == mlcycle
    # Untemplated: the chart's copies are exactly the generated top-level ones.
    for path in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text()


# --- labels, lint, values -------------------------------------------------------------------------------------


def test_every_object_has_the_standard_labels(rendered):
    for doc in rendered:
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/name"] == "mlcycle" and labels["app.kubernetes.io/part-of"] == "mlcycle"
        if doc["kind"] in WORKLOAD_KINDS - {"Pod"}:
            template_labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= template_labels.items()


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "defaults")
def test_helm_lint_strict(helm, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("setting", "named"), [
    ("replicaCount=two", "replicaCount"),
    ("logLevel=LOUD", "logLevel"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("prometheus.url=prometheus:9090", "url"),
    ("watchNamespaces={Team_A}", "watchNamespaces"),
    ("resources.limits.memory=lots", "memory"),
    ("replicas=2", "replicas"),  # a typo of replicaCount
    ("image.digest=latest", "digest"),
    ("runtimeImage.digest=sha256:abc", "digest"),
])
def test_schema_refuses_bad_values_naming_them(helm, setting, named):
    result = run_helm(helm, "template", "mlcycle", str(CHART), "--set", setting)
    assert result.returncode != 0, f"--set {setting} was accepted"
    assert named in result.stderr and "schema" in result.stderr, result.stderr


KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):")


def documented_values(text: str) -> dict[str, str]:
    """helm-docs' convention: a `# --` comment documents the key below it and everything under that key."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str, bool]] = []
    comment: list[str] | None = None
    undocumented = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
        elif stripped.startswith("#") and comment is not None:
            comment.append(stripped[1:].strip())
        elif (match := KEY.match(line)) and not stripped.startswith("- "):
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([key for _, key, _ in stack] + [match.group(2)])
            inherited = any(doc for _, _, doc in stack)
            if comment:
                docs[path] = " ".join(comment)
            elif not inherited and line.rstrip().split(":", 1)[1].strip():
                undocumented.append(path)  # a leaf with no comment of its own or above
            stack.append((indent, match.group(2), bool(comment) or inherited))
            comment = None
        elif stripped:
            comment = None
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    return docs


def test_every_value_is_documented_in_values_yaml_the_readme_and_the_schema():
    docs = documented_values((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path in docs:
        assert f"| `{path}` |" in readme, f"{path} is missing from the README's values table"
        node = schema
        for part in path.split("."):
            assert part in node.get("properties", {}), f"{path} is missing from values.schema.json"
            node = node["properties"][part]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= {path.split(".")[0] for path in docs}


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["version"], chart["appVersion"]) == ("v2", "0.1.0", "0.1.0")
    import mlcycle_operator

    assert chart["appVersion"] == mlcycle_operator.__version__
