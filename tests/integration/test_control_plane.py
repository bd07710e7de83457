"""Proof that the local control plane is the real thing: scheduling, schema validation, garbage collection."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.harness.binaries import KUBERNETES_VERSION
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def test_api_server_reports_its_real_version(api_client):
    assert client.VersionApi(api_client).get_code().git_version == KUBERNETES_VERSION


def test_deployment_pods_are_scheduled_on_fake_nodes_and_become_available(api_client, namespace):
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    labels = {"app": "web"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(
                    name="web", image="example.invalid/web:1",
                    resources=client.V1ResourceRequirements(requests={"cpu": "100m", "memory": "64Mi"}),
                )]),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)

    def available():
        status = apps.read_namespaced_deployment_status("web", namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return conditions.get("Available") == "True" and status.available_replicas == 3

    wait_for(available, what="Deployment web to be Available with 3 replicas")
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    nodes = {n.metadata.name: n for n in core.list_node().items}
    for pod in pods:
        assert pod.status.phase == "Running"
        # Scheduled by the real scheduler onto a KWOK CPU node (the GPU node is tainted).
        assert pod.spec.node_name in nodes
        assert nodes[pod.spec.node_name].metadata.labels["type"] == "kwok"
        assert "nvidia.com/gpu.present" not in nodes[pod.spec.node_name].metadata.labels
        assert pod.status.pod_ip, f"pod {pod.metadata.name} has no IP"


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.mlcycle.io"},
    "spec": {
        "group": "harness.mlcycle.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "string", "enum": ["small", "large"]},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10},
                        "minWeight": {"type": "integer"},
                        "maxWeight": {"type": "integer"},
                    },
                    "x-kubernetes-validations": [{
                        "rule": "!has(self.minWeight) || !has(self.maxWeight) || self.minWeight <= self.maxWeight",
                        "message": "minWeight must not exceed maxWeight",
                        "fieldPath": ".minWeight",
                    }],
                }},
            }},
        }],
    },
}


@pytest.fixture(scope="module")
def widget_crd(api_client):
    ext = client.ApiextensionsV1Api(api_client)
    name = WIDGET_CRD["metadata"]["name"]
    ext.create_custom_resource_definition(WIDGET_CRD)

    def established():
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, what=f"CRD {name} to be Established")
    yield name
    ext.delete_custom_resource_definition(name)


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"size": "huge"}, "spec.size", "Unsupported value"),
        ({"size": "small", "replicas": 0}, "spec.replicas", "should be greater than or equal to 1"),
        ({"size": "small", "replicas": "three"}, "spec.replicas", "must be of type integer"),
        ({"replicas": 2}, "spec.size", "Required value"),
        ({"size": "small", "minWeight": 50, "maxWeight": 10}, "spec.minWeight", "minWeight must not exceed maxWeight"),
    ],
)
def test_invalid_custom_resource_is_refused_naming_the_field(api_client, namespace, widget_crd, spec, field, words):
    objects = client.CustomObjectsApi(api_client)
    body = {"apiVersion": "harness.mlcycle.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
    with pytest.raises(client.ApiException) as refused:
        objects.create_namespaced_custom_object("harness.mlcycle.io", "v1", namespace, "widgets", body)
    assert refused.value.status == 422
    assert field in refused.value.body and words in refused.value.body
    # The schema accepts a valid object, so the refusal above was about the field, not the kind.
    good = dict(body, spec={"size": "small", "replicas": 2, "minWeight": 1, "maxWeight": 5})
    created = objects.create_namespaced_custom_object("harness.mlcycle.io", "v1", namespace, "widgets", good)
    assert created["spec"]["replicas"] == 2


def test_deleting_an_owner_garbage_collects_its_dependents(api_client, namespace):
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref]), data={"k": "v"}))
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="dependent-secret", owner_references=[ref]), string_data={"k": "v"}))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander")))

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def dependents_gone():
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        secrets = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
        return "dependent" not in names and "dependent-secret" not in secrets

    wait_for(dependents_gone, timeout=60, what="the garbage collector to delete the owner's dependents")
    names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
    assert "bystander" in names, "an object without an owner reference must survive"
    assert "owner" not in names
