"""Desired vs existing: Create when absent, Unchanged when what we set is already there, Update otherwise."""

from __future__ import annotations

import copy

import pytest

from mlcycle_operator.resources.compare import Action, action_for, is_subset


def deployment(replicas: int = 2, cpu: str = "500m", image: str = "ghcr.io/mlcycle/runtime:0.1.0") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "churn-v-1", "namespace": "ml", "labels": {"app.kubernetes.io/instance": "churn"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "churn"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/instance": "churn"}},
                "spec": {
                    "containers": [{
                        "name": "model-server", "image": image,
                        "resources": {"requests": {"cpu": cpu, "memory": "512Mi"},
                                      "limits": {"cpu": cpu, "memory": "512Mi"}},
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
                    }],
                    "volumes": [{"name": "config", "configMap": {"name": "churn-v-1"}}],
                },
            },
        },
    }


def as_stored(desired: dict) -> dict:
    """What the API server returns for `desired`: the same, plus what the server and controllers add."""
    stored = copy.deepcopy(desired)
    stored["metadata"].update({
        "uid": "5d1c", "resourceVersion": "4711", "generation": 3, "creationTimestamp": "2025-03-01T12:00:00Z",
        "managedFields": [{"manager": "mlcycle-operator", "operation": "Apply"}],
        "ownerReferences": [{"apiVersion": "mlcycle.io/v1alpha1", "kind": "ModelDeployment", "name": "churn"}],
        "annotations": {"deployment.kubernetes.io/revision": "1"},
    })
    stored["metadata"]["labels"]["added-by-someone"] = "else"
    spec = stored["spec"]
    spec.update({"revisionHistoryLimit": 10, "progressDeadlineSeconds": 600})
    pod = spec["template"]["spec"]
    pod.update({"restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler"})
    pod["containers"][0].update({"terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"})
    pod["volumes"][0]["configMap"]["defaultMode"] = 420
    stored["status"] = {"replicas": 2, "readyReplicas": 2, "observedGeneration": 3}
    return stored


def test_absent_is_create():
    assert action_for(deployment(), None) is Action.CREATE


def test_equal_is_unchanged():
    assert action_for(deployment(), copy.deepcopy(deployment())) is Action.UNCHANGED


def test_server_added_fields_are_unchanged():
    assert action_for(deployment(), as_stored(deployment())) is Action.UNCHANGED


def test_empty_collections_the_server_omits_are_unchanged():
    """The API server drops `envFrom: []` and empty maps; comparing literally re-applied every child on every
    reconcile (a thousand deployments' resyncs then kept every worker busy with no-op patches)."""
    desired = deployment()
    container = desired["spec"]["template"]["spec"]["containers"][0]
    container.update({"envFrom": [], "env": []})
    desired["metadata"]["annotations"] = {}
    stored = as_stored(deployment())
    assert action_for(desired, stored) is Action.UNCHANGED
    container["envFrom"] = [{"secretRef": {"name": "s3"}}]
    assert action_for(desired, stored) is Action.UPDATE


def test_our_own_owner_references_and_status_are_not_compared():
    desired = deployment()
    desired["metadata"]["ownerReferences"] = [{"kind": "ModelDeployment", "name": "other", "uid": "x"}]
    desired["metadata"]["resourceVersion"] = "1"
    desired["metadata"]["finalizers"] = ["mlcycle.io/cleanup"]
    desired["status"] = {"replicas": 99}
    assert action_for(desired, as_stored(deployment())) is Action.UNCHANGED


@pytest.mark.parametrize("change", [
    pytest.param(lambda d: d["spec"].update(replicas=3), id="replicas"),
    pytest.param(lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="runtime:0.2.0"), id="image"),
    pytest.param(lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="1"),
                 id="nested-quantity"),
    pytest.param(lambda d: d["metadata"]["labels"].update({"app.kubernetes.io/instance": "other"}), id="label"),
    pytest.param(lambda d: d["metadata"].setdefault("annotations", {}).update({"mlcycle.io/config-hash": "abc"}),
                 id="new-annotation"),
    pytest.param(lambda d: d["spec"]["template"]["spec"].update(serviceAccountName="new"), id="new-field"),
])
def test_a_changed_or_missing_value_is_update(change):
    desired = deployment()
    change(desired)
    assert action_for(desired, as_stored(deployment())) is Action.UPDATE


@pytest.mark.parametrize("volumes", [
    pytest.param([], id="fewer"),
    pytest.param([{"name": "config", "configMap": {"name": "churn-v-1"}}, {"name": "tmp", "emptyDir": {}}], id="more"),
])
def test_a_list_of_another_length_is_update(volumes):
    desired = deployment()
    desired["spec"]["template"]["spec"]["volumes"] = volumes
    assert action_for(desired, as_stored(deployment())) is Action.UPDATE


def test_list_order_matters():
    assert is_subset([{"name": "a"}, {"name": "b"}], [{"name": "a"}, {"name": "b"}])
    assert not is_subset([{"name": "a"}, {"name": "b"}], [{"name": "b"}, {"name": "a"}])


@pytest.mark.parametrize(("desired", "existing"), [("1", 1), (1, "1"), ("2", 2), (3, "3"), ("0.5", 0.5)])
def test_a_quantity_as_number_or_string_is_unchanged(desired, existing):
    assert is_subset(desired, existing)
    stored = as_stored(deployment())
    stored["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = existing
    wanted = deployment()
    wanted["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = desired
    assert action_for(wanted, stored) is Action.UNCHANGED


@pytest.mark.parametrize(("desired", "existing"), [("1", 2), (2, "1"), ("500m", 0.5), ("1Gi", 1)])
def test_a_different_quantity_is_update(desired, existing):
    assert not is_subset(desired, existing)




@pytest.mark.parametrize(("desired", "existing"), [
    (True, "true"), (True, "True"), (False, "false"), (False, "False"), ("true", True), ("false", False),
    (True, False), (False, True),
    pytest.param("True", True, id="str-True-vs-bool"),
    pytest.param("False", False, id="str-False-vs-bool"),
], ids=repr)
def test_booleans_are_not_confused_with_strings(desired, existing):
    assert not is_subset(desired, existing)
    assert action_for({"metadata": {"name": "x"}, "spec": {"flag": desired}},
                      {"metadata": {"name": "x"}, "spec": {"flag": existing}}) is Action.UPDATE


@pytest.mark.parametrize("value", [True, False, "true", 0, 1, "x", None, 0.5])
def test_a_value_is_a_subset_of_itself(value):
    assert is_subset(value, value)


def test_dict_against_non_dict_and_list_against_non_list():
    assert not is_subset({"a": 1}, [("a", 1)])
    assert not is_subset({"a": 1}, None)
    assert not is_subset([1], {"0": 1})
    assert not is_subset([1], "1")


def test_none_is_not_an_absent_key():
    # The API server drops nulls: a desired null that is not there must show as a difference, not be ignored.
    assert not is_subset({"a": None}, {})
    assert is_subset({}, {"a": None})


def test_metadata_differences_are_found_before_the_spec():
    desired = deployment()
    desired["metadata"]["labels"]["tier"] = "gold"
    stored = as_stored(deployment())
    assert action_for(desired, stored) is Action.UPDATE
    stored["metadata"]["labels"]["tier"] = "gold"
    assert action_for(desired, stored) is Action.UNCHANGED


def test_kind_and_api_version_are_not_compared():
    # Served under another version the object is the same object; the name in the URL already chose it.
    desired = deployment()
    stored = as_stored(desired)
    stored["apiVersion"] = "apps/v1beta2"
    assert action_for(desired, stored) is Action.UNCHANGED


def test_action_for_does_not_mutate_its_arguments():
    desired = deployment()
    desired["status"] = {"x": 1}
    desired["metadata"]["uid"] = "u"
    stored = as_stored(deployment())
    snapshot = (copy.deepcopy(desired), copy.deepcopy(stored))
    action_for(desired, stored)
    assert (desired, stored) == snapshot
