"""The Helm chart installed into the real control plane: the operator Deployment becomes Available on KWOK nodes,
the CRDs are Established, the RBAC is what the real authorizer enforces, and uninstall cleans up (except the
CRDs, which Helm never deletes).

KWOK runs no containers, so the operator inside the chart does not actually start here (the other integration
tests run it in-process); for the same reason `helm test` is not run.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from mlcycle_operator.api.mlproject import MLProjectSpec
from mlcycle_operator.resources import project
from mlcycle_operator.resources.common import Meta
from tests.harness import binaries
from tests.harness.pytest_support import unavailable
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlcycle"
MLCYCLE_CRDS = ("mlprojects.mlcycle.io", "trainingjobs.mlcycle.io", "modeldeployments.mlcycle.io",
                "driftmonitors.mlcycle.io")
KOPF_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


@pytest.fixture(scope="module")
def helm_binary() -> Path:
    path = binaries.install_dir(binaries.COMPONENTS["helm"]) / "helm"
    if not path.exists():
        unavailable("helm", f"{path} is not built (make binaries)")
    return path


class Helm:
    """helm against the test cluster; a failure fails the test with helm's output."""

    def __init__(self, binary: Path, kubeconfig: Path):
        self.binary, self.kubeconfig = binary, kubeconfig

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        result = subprocess.run([str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout


@pytest.fixture
def helm(helm_binary: Path, cluster) -> Helm:
    return Helm(helm_binary, cluster.kubeconfig)


@pytest.fixture
def release(helm: Helm, namespace: str) -> Iterator[str]:
    """A release name unique to the test, uninstalled afterwards even when the test fails half-way, so that no
    cluster-scoped object outlives it."""
    name = f"mlc-{uuid.uuid4().hex[:6]}"
    yield name
    helm("uninstall", name, "-n", namespace, "--ignore-not-found", "--wait", check=False)


def condition_true(conditions, kind: str) -> bool:
    return any(c.type == kind and c.status == "True" for c in conditions or [])


def can(api_client, user: str, verb: str, group: str, resource: str, namespace: str | None = None) -> bool:
    """Ask the API server's authorizer (SubjectAccessReview) whether `user` may do this."""
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=["system:serviceaccounts", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(verb=verb, group=group, resource=resource,
                                                        namespace=namespace)))
    return client.AuthorizationV1Api(api_client).create_subject_access_review(review).status.allowed


def impersonating(cluster, user: str) -> client.ApiClient:
    api = config.new_client_from_config(str(cluster.kubeconfig))
    api.set_default_header("Impersonate-User", user)
    return api


def test_install_makes_the_operator_deployment_available_and_uninstall_cleans_up(cluster, api_client, helm,
                                                                                  namespace, release):
    """Install, upgrade and uninstall the chart. The operator's Deployment becomes Available on KWOK nodes, whose
    pods are simulated: no operator container runs here, so this checks what the chart creates, not that the
    operator in it works (the other integration tests run the operator itself)."""
    helm("install", release, str(CHART), "-n", namespace, "-f", str(CHART / "ci" / "ci-values.yaml"),
         "--wait", "--timeout", "150s")
    fullname = f"{release}-mlcycle"
    cluster_name = f"{namespace}-{fullname}"
    apps = client.AppsV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    ext = client.ApiextensionsV1Api(api_client)

    # The operator (two replicas, ci values) and the in-chart Prometheus are Available on KWOK nodes.
    for name in (fullname, f"{fullname}-prometheus"):
        wait_for(lambda name=name: condition_true(apps.read_namespaced_deployment(name, namespace).status.conditions,
                                                  "Available"), what=f"Deployment {name} Available")
    operator = apps.read_namespaced_deployment(fullname, namespace)
    assert operator.spec.replicas == 2
    assert operator.spec.template.spec.containers[0].command == ["python", "-m", "mlcycle_operator"]
    assert client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget(fullname, namespace)

    # CRDs from crds/ (mlcycle) and from the kopf-peering subchart: served.
    for name in MLCYCLE_CRDS + KOPF_CRDS:
        wait_for(lambda name=name: condition_true(ext.read_custom_resource_definition(name).status.conditions,
                                                  "Established"), what=f"CRD {name} Established")

    # RBAC named after namespace and release; the peering object the replicas meet in.
    for name in (cluster_name, f"{cluster_name}-cluster", f"{cluster_name}-prometheus"):
        assert rbac.read_cluster_role(name).rules
        assert rbac.read_cluster_role_binding(name).subjects
    peering = client.CustomObjectsApi(api_client).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", cluster_name)
    assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == release

    # An upgrade goes through (same chart, different values) and reaches the pods.
    helm("upgrade", release, str(CHART), "-n", namespace, "--reuse-values", "--set", "logLevel=WARNING",
         "--set", "replicaCount=1", "--wait", "--timeout", "150s")
    env = {e.name: e.value for e in apps.read_namespaced_deployment(fullname, namespace)
           .spec.template.spec.containers[0].env}
    assert env["MLCYCLE_LOG_LEVEL"] == "WARNING"
    with pytest.raises(client.ApiException) as gone:
        client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget(fullname, namespace)
    assert gone.value.status == 404

    helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s")
    for read in (lambda: apps.read_namespaced_deployment(fullname, namespace),
                 lambda: rbac.read_cluster_role(cluster_name),
                 lambda: rbac.read_cluster_role_binding(f"{cluster_name}-cluster"),
                 lambda: rbac.read_cluster_role(f"{cluster_name}-prometheus"),
                 lambda: client.CustomObjectsApi(api_client).get_cluster_custom_object(
                     "kopf.dev", "v1", "clusterkopfpeerings", cluster_name)):
        with pytest.raises(client.ApiException) as err:
            read()
        assert err.value.status == 404
    # Helm never deletes CRDs: uninstalling the operator must not delete every model deployment with them.
    for name in MLCYCLE_CRDS:
        assert ext.read_custom_resource_definition(name)


def test_operator_identity_is_least_privilege_as_enforced(cluster, api_client, helm, namespace, release):
    """The real authorizer on the installed RBAC: the operator may do its work, may not read Secrets, and may
    create the per-project workload Role without `escalate` (the API server refuses a Role granting more than its
    creator holds)."""
    helm("install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "150s")
    user = f"system:serviceaccount:{namespace}:{release}-mlcycle"
    for verb, group, resource in (("create", "apps", "deployments"), ("patch", "mlcycle.io", "modeldeployments"),
                                  ("patch", "mlcycle.io", "trainingjobs/status"), ("create", "", "events"),
                                  ("list", "", "pods"), ("create", "rbac.authorization.k8s.io", "roles")):
        assert can(api_client, user, verb, group, resource, "default"), f"the operator cannot {verb} {resource}"
    assert can(api_client, user, "watch", "apiextensions.k8s.io", "customresourcedefinitions")
    assert can(api_client, user, "patch", "kopf.dev", "clusterkopfpeerings")  # watching every namespace
    for verb, group, resource in (("get", "", "secrets"), ("list", "", "secrets"), ("update", "apps", "deployments"),
                                  ("delete", "mlcycle.io", "modeldeployments"), ("create", "", "pods"),
                                  ("escalate", "rbac.authorization.k8s.io", "roles"),
                                  ("delete", "apiextensions.k8s.io", "customresourcedefinitions")):
        assert not can(api_client, user, verb, group, resource, "default"), f"the operator may {verb} {resource}"

    example = yaml.safe_load((ROOT / "examples" / "churn" / "manifests" / "01-mlproject.yaml").read_text())
    role = project.workload_role(MLProjectSpec.model_validate(example["spec"]), Meta(name="churn", namespace=namespace))
    as_operator = impersonating(cluster, user)
    try:
        client.RbacAuthorizationV1Api(as_operator).create_namespaced_role(namespace, role)
    finally:
        as_operator.close()


def test_namespaced_install_grants_only_in_watched_namespaces(api_client, helm, namespace, release):
    """watchNamespaces: RoleBindings and KopfPeerings in those namespaces, nothing namespaced granted elsewhere.
    The CRDs exist already (an earlier install or the other tests), which Helm skips without complaint."""
    helm("install", release, str(CHART), "-n", namespace, "--set", f"watchNamespaces={{{namespace}}}",
         "--wait", "--timeout", "150s")
    user = f"system:serviceaccount:{namespace}:{release}-mlcycle"
    assert can(api_client, user, "create", "apps", "deployments", namespace)
    assert not can(api_client, user, "create", "apps", "deployments", "default")
    assert not can(api_client, user, "list", "mlcycle.io", "trainingjobs", "default")
    # Kopf's cluster-wide needs stay granted; the cluster-wide peering, unused here, is not.
    assert can(api_client, user, "list", "", "namespaces")
    assert can(api_client, user, "patch", "kopf.dev", "kopfpeerings", namespace)
    for verb in ("get", "list", "watch", "patch"):
        assert not can(api_client, user, verb, "kopf.dev", "clusterkopfpeerings"), f"the operator may {verb} them"
    peering = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", f"{namespace}-{release}-mlcycle")
    assert peering["metadata"]["name"] == f"{namespace}-{release}-mlcycle"
