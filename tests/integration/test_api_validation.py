"""The mlcycle API as the real API server enforces it: examples accepted and defaulted, bad manifests refused."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.harness import binaries

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "examples" / "churn" / "manifests"
EXAMPLES = {m["kind"]: m for m in (yaml.safe_load(p.read_text()) for p in sorted(MANIFESTS.glob("*.yaml")))}
PLURALS = {"MLProject": "mlprojects", "TrainingJob": "trainingjobs",
           "ModelDeployment": "modeldeployments", "DriftMonitor": "driftmonitors"}
DELETE = object()


def create(api_client, namespace: str, manifest: dict) -> dict:
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "mlcycle.io", "v1alpha1", namespace, PLURALS[manifest["kind"]], manifest)


def mutated(kind: str, changes: dict) -> dict:
    """The example of `kind` with dotted paths set (or deleted, with DELETE)."""
    manifest = copy.deepcopy(EXAMPLES[kind])
    manifest["metadata"] = {"name": "bad"}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return manifest


def test_every_example_is_accepted_and_defaulted(api_client, mlcycle_crds, namespace):
    for kind in PLURALS:
        create(api_client, namespace, EXAMPLES[kind])
    objects = client.CustomObjectsApi(api_client)
    job = objects.get_namespaced_custom_object("mlcycle.io", "v1alpha1", namespace, "trainingjobs", "churn-v1")
    # Defaults come from the schema (the API server), not from the operator.
    assert job["spec"]["activeDeadline"] == "6h"
    assert job["spec"]["validation"]["allowExtraColumns"] is True
    assert job["spec"]["tuning"]["scheduler"] == {"type": "asha", "gracePeriod": 5, "reductionFactor": 3.0}
    assert job["spec"]["evaluation"]["baselines"] == ["zeroRule", "random", "champion"]
    monitor = objects.get_namespaced_custom_object("mlcycle.io", "v1alpha1", namespace, "driftmonitors", "churn")
    assert monitor["spec"]["resources"] == {"cpu": "250m", "memory": "512Mi", "gpu": 0}
    assert monitor["spec"]["prediction"] is True


def test_kubectl_get_mlcycle_lists_every_kind_with_columns(cluster, api_client, mlcycle_crds, namespace):
    for kind in PLURALS:
        create(api_client, namespace, EXAMPLES[kind])
    kubectl = binaries.install_dir(binaries.COMPONENTS["kubernetes"]) / "kubectl"
    out = subprocess.run([str(kubectl), f"--kubeconfig={cluster.kubeconfig}", "get", "mlcycle", "-n", namespace],
                         capture_output=True, text=True, check=True).stdout
    for expected in ("mlproject.mlcycle.io/churn", "trainingjob.mlcycle.io/churn-v1",
                     "modeldeployment.mlcycle.io/churn", "driftmonitor.mlcycle.io/churn",
                     "METRIC", "roc_auc", "MODEL", "churn-classifier", "STABLE", "TRAFFIC",
                     "LAST-RETRAIN"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    short = subprocess.run([str(kubectl), f"--kubeconfig={cluster.kubeconfig}", "get", "tj,md,mlp,dm", "-n", namespace,
                            "-o", "json"], capture_output=True, text=True, check=True).stdout
    assert len(json.loads(short)["items"]) == 4


# (kind, changes, field named in the error, words of the error)
MALFORMED = [
    ("MLProject", {"spec.owners": []}, "spec.owners", "should have at least 1 items"),
    ("MLProject", {"spec.storage.uri": "ftp://models"}, "spec.storage.uri", "should match"),
    ("MLProject", {"spec.objective.metric.direction": "up"}, "spec.objective.metric.direction", "Unsupported value"),
    ("MLProject", {"spec.storage.uri": "file:///models"}, "spec.storage.pvc", "pvc settings apply only to pvc://"),
    ("MLProject", {"spec.featureStore.onlineStore": {"type": "redis"}},
     "spec.featureStore.onlineStore.connectionString", "a redis online store needs connectionString"),
    ("MLProject", {"spec.retraining.cooldown": "six hours"}, "spec.retraining.cooldown", "should match"),
    ("MLProject", {"spec.retraining.maxConcurrent": 0}, "spec.retraining.maxConcurrent", "greater than or equal to 1"),
    ("MLProject", {"spec.objective": DELETE}, "spec.objective", "Required value"),
    ("TrainingJob", {"spec.tuning.numSamples": 0}, "spec.tuning.numSamples", "greater than or equal to 1"),
    ("TrainingJob", {"spec.tuning.searchSpace.eta": {"type": "uniform", "lower": 0.3, "upper": 0.01}},
     "spec.tuning.searchSpace[eta].lower", "lower must be below upper"),
    ("TrainingJob", {"spec.tuning.searchSpace.booster": {"type": "choice"}},
     "spec.tuning.searchSpace[booster].values", "choice and grid need values"),
    ("TrainingJob", {"spec.tuning.searchSpace.eta": {"type": "loguniform", "lower": 0, "upper": 1}},
     "spec.tuning.searchSpace[eta].lower", "loguniform needs lower > 0"),
    ("TrainingJob", {"spec.model.framework": "catboost"}, "spec.model.framework", "Unsupported value"),
    ("TrainingJob", {"spec.model.framework": "custom"}, "spec.model.entrypoint", "entrypoint is required"),
    ("TrainingJob", {"spec.data.split": {"validationFraction": 0.6, "testFraction": 0.5}},
     "spec.data.split.validationFraction", "must leave rows to train on"),
    ("TrainingJob", {"spec.data.features": ["customer:tenure_months"]}, "spec.data.featureService",
     "set featureService or features, not both"),
    ("TrainingJob", {"spec.validation.columns": [{"name": "age", "min": 90, "max": 18}]},
     "spec.validation.columns[0].min", "min must not exceed max"),
    ("TrainingJob", {"spec.output.modelName": "Churn_Model"}, "spec.output.modelName", "should match"),
    ("TrainingJob", {"spec.data.labelColumn": DELETE}, "spec.data.labelColumn", "Required value"),
    ("ModelDeployment", {"spec.model.version": "3"}, "spec.model", "set exactly one of model.version"),
    ("ModelDeployment", {"spec.strategy.canary.steps": [{"weight": 50}, {"weight": 10}]},
     "spec.strategy.canary.steps", "strictly increasing"),
    ("ModelDeployment", {"spec.strategy.canary.steps": [{"weight": 150}]},
     "spec.strategy.canary.steps[0].weight", "less than or equal to 100"),
    ("ModelDeployment", {"spec.serving.autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
     "spec.serving.autoscaling.minReplicas", "minReplicas must not exceed maxReplicas"),
    ("ModelDeployment", {"spec.strategy.canary.analysis.metrics": [{"name": "x", "type": "promql", "threshold": 1}]},
     "spec.strategy.canary.analysis.metrics[0].query", "query is required for type promql"),
    ("ModelDeployment", {"spec.strategy.shadow": {"percent": 10}}, "spec.strategy.shadow",
     "shadow settings need type Shadow"),
    ("ModelDeployment", {"spec.serving.resources.cpu": "lots"}, "spec.serving.resources.cpu", "should match"),
    ("ModelDeployment", {"spec.serving.resources.gpu": -1}, "spec.serving.resources.gpu", "greater than or equal to 0"),
    ("DriftMonitor", {"spec.reference": {"source": "Uri"}}, "spec.reference.uri", "uri is required for source Uri"),
    ("DriftMonitor", {"spec.tests.numeric": {"method": "chiSquared", "threshold": 0.01}}, "spec.tests.numeric.method",
     "numeric tests are psi, ks, wasserstein or jensenShannon"),
    ("DriftMonitor", {"spec.actions.retrain.maxPerDay": -1}, "spec.actions.retrain.maxPerDay",
     "greater than or equal to 0"),
    ("DriftMonitor", {"spec.window": "forever"}, "spec.window", "should match"),
    ("DriftMonitor", {"spec.deployment": DELETE}, "spec.deployment", "Required value"),
    ("ModelDeployment", {"metadata.name": "churn-" + "x" * 60}, "<nil>", "metadata.name must be at most 63 characters"),
]


@pytest.mark.parametrize(
    ("kind", "changes", "field", "words"), MALFORMED,
    ids=[f"{kind}-{field.removeprefix('spec.')}" for kind, _, field, _ in MALFORMED],
)
def test_malformed_manifest_is_refused_naming_the_field(api_client, mlcycle_crds, namespace, kind, changes, field,
                                                        words):
    with pytest.raises(client.ApiException) as refused:
        create(api_client, namespace, mutated(kind, changes))
    assert refused.value.status == 422, refused.value.body
    message = json.loads(refused.value.body)["message"]
    assert f"{field}:" in message, f"the error does not name {field}: {message}"
    assert words in message, message
