"""The operator's cache of what it watches (handlers/_cache.py): how objects are kept and looked up. Kopf fills
the indexes from real watches (exercised by every integration test); here the index shape is built by hand."""

from __future__ import annotations

import asyncio
import json

import pytest

from mlcycle_operator import kube
from mlcycle_operator.handlers import _cache

OWNER = "uid-of-md"


def deployment(name: str, owner: str = OWNER, **labels: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels,
                         "ownerReferences": [{"uid": owner, "kind": "ModelDeployment", "name": "md"}],
                         "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}]},
            "spec": {"replicas": 1}, "status": {"availableReplicas": 1}}


def index_of(*bodies: dict) -> dict:
    """What Kopf builds from the indexing function's results: key -> the values of every object under it."""
    index: dict = {}
    for body in bodies:
        meta = body["metadata"]
        for key, value in asyncio.run(_cache._index_child(body, meta["namespace"], meta["name"])).items():
            index.setdefault(key, []).append(value)
    return index


def test_a_child_is_kept_without_managed_fields_under_its_name_and_its_owner():
    keys = asyncio.run(_cache._index_child(deployment("a"), "ns", "a"))
    assert set(keys) == {("ns", "a"), OWNER}
    kept = json.loads(keys[("ns", "a")])
    assert "managedFields" not in kept["metadata"]
    assert kept["spec"] == {"replicas": 1} and kept["status"] == {"availableReplicas": 1}


def test_lookups_distinguish_absent_from_not_cached():
    cache = _cache.Cache({"cache_deployments": index_of(deployment("a"))})
    assert cache.child("Deployment", "ns", "a")["metadata"]["name"] == "a"
    assert cache.child("Deployment", "ns", "b") is None  # absent: apply creates it without reading first
    assert cache.child("Deployment", "other", "a") is None
    assert cache.child("Service", "ns", "a") is kube.UNKNOWN  # no index for it: apply reads it first
    assert cache.child("RayJob", "ns", "a") is kube.UNKNOWN


def test_children_of_an_owner_by_kind():
    index = index_of(deployment("a"), deployment("b"), deployment("c", owner="someone-else"))
    cache = _cache.Cache({"cache_deployments": index})
    assert sorted(d["metadata"]["name"] for d in cache.owned("Deployment", OWNER)) == ["a", "b"]
    assert list(cache.owned("Deployment", "nobody")) == []
    assert cache.cached("Deployment") and not cache.cached("Service")


def test_without_indexes_nothing_is_cached():
    cache = _cache.Cache({})
    assert cache.child("ConfigMap", "ns", "x") is kube.UNKNOWN
    assert list(cache.owned("ConfigMap", OWNER)) == []
    assert cache.members("TrainingJob", "ns", "p") == []


@pytest.mark.parametrize("kind", ["TrainingJob", "ModelDeployment", "DriftMonitor"])
def test_members_are_summaries_keyed_by_kind_namespace_and_project(kind):
    body = {"metadata": {"name": "x", "labels": {"team": "a"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"project": "churn", "output": {"modelName": "m"}, "model": {"name": "m", "track": {}}},
            "status": {"phase": "Succeeded", "gatesPassed": True, "model": {"version": "v1", "uri": "u"},
                       "stableVersion": "v1", "modelUri": "u"}}
    indexer = _cache._member_indexer(kind)
    (key, summary), = asyncio.run(indexer(body=body, namespace="ns")).items()
    assert key == (kind, "ns", "churn")
    assert summary["name"] == "x" and summary["project"] == "churn" and summary["labels"] == {"team": "a"}
    if kind == "TrainingJob":
        assert summary["modelName"] == "m" and summary["gatesPassed"] is True and summary["model"]["version"] == "v1"
    if kind == "ModelDeployment":
        assert summary["tracking"] is True and summary["stableVersion"] == "v1" and summary["modelUri"] == "u"
    cache = _cache.Cache({f"cache_{kind.lower()}s": {key: [summary]}})
    assert cache.members(kind, "ns", "churn") == [summary]
    assert cache.members(kind, "ns", "other") == []


def test_every_cached_kind_is_one_the_operator_writes():
    assert set(_cache.CHILD_KINDS) <= set(kube.PLURALS)
    for kind, (_, _, plural) in _cache.CHILD_KINDS.items():
        assert kube.PLURALS[kind] == plural


def test_a_tracking_deployment_picks_gated_versions_from_job_summaries_oldest_first():
    from mlcycle_operator.api.mlproject import MLProjectSpec
    from mlcycle_operator.api.modeldeployment import ModelDeploymentSpec
    from mlcycle_operator.handlers.modeldeployment import available_versions
    from mlcycle_operator.resources.common import Meta

    def job(name, version, finished, labels=None, **status):
        body = {"metadata": {"name": name, "labels": labels or {"team": "a"}},
                "spec": {"project": "churn", "output": {"modelName": "m"}},
                "status": {"phase": "Succeeded", "gatesPassed": True, "completionTime": finished,
                           "model": {"version": version, "uri": f"pvc://s/{version}"}, **status}}
        return next(iter(asyncio.run(_cache._member_indexer("TrainingJob")(body=body, namespace="ns")).values()))

    jobs = [job("j2", "v2", "2026-01-02T00:00:00Z"), job("j1", "v1", "2026-01-01T00:00:00Z"),
            job("failed-gates", "v3", "2026-01-03T00:00:00Z", gatesPassed=False),
            job("running", "v4", "2026-01-04T00:00:00Z", phase="Training"),
            job("other-team", "v5", "2026-01-05T00:00:00Z", labels={"team": "b"})]
    md = ModelDeploymentSpec.model_validate({"project": "churn", "model": {
        "name": "m", "track": {"selector": {"matchLabels": {"team": "a"}}}}})
    project = MLProjectSpec.model_validate({"objective": {"businessMetric": "x", "metric": {"name": "auc"}},
                                            "owners": ["a@b"], "storage": {"uri": "pvc://s"}})
    found = available_versions(md, Meta(name="md", namespace="ns"), project, jobs)
    assert [(v.version, v.training_job) for v in found] == [("v1", "j1"), ("v2", "j2")]


def test_nudges_are_changes_kopf_sees():
    """Kopf leaves its own prefix's annotations out of the state it diffs: a nudge there would trigger nothing."""
    import kopf

    from mlcycle_operator.handlers.modeldeployment import NUDGE_ANNOTATION, READY_ANNOTATION
    from mlcycle_operator.settings import PREFIX, diffbase_storage

    storage = diffbase_storage()
    body = {"apiVersion": "mlcycle.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "churn", "annotations": {f"{PREFIX}/kopf-managed": "yes", f"{PREFIX}/other": "x"}},
            "spec": {"project": "churn"}}
    before = storage.build(body=kopf.Body(body))
    for annotation in (NUDGE_ANNOTATION, READY_ANNOTATION):
        nudged = {**body, "metadata": {**body["metadata"], "annotations": {**body["metadata"]["annotations"],
                                                                           annotation: "now"}}}
        assert storage.build(body=kopf.Body(nudged)) != before, annotation
    # What the test guards against: under Kopf's prefix the same change is invisible.
    hidden = {**body, "metadata": {**body["metadata"], "annotations": {**body["metadata"]["annotations"],
                                                                       f"{PREFIX}/child-ready": "now"}}}
    assert storage.build(body=kopf.Body(hidden)) == before
