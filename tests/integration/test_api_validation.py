"""The mlcycle API as the real API server enforces it: examples accepted and defaulted, bad manifests refused."""

from __future__ import annotations

import copy
import json
import re
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
           "ModelDeployment": "modeldeployments", "DriftMonitor": "driftmonitors",
           "BatchPrediction": "batchpredictions"}
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
                     "LAST-RETRAIN", "batchprediction.mlcycle.io/churn-nightly"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    short = subprocess.run([str(kubectl), f"--kubeconfig={cluster.kubeconfig}", "get", "tj,md,mlp,dm", "-n", namespace,
                            "-o", "json"], capture_output=True, text=True, check=True).stdout
    assert len(json.loads(short)["items"]) == 4


DOCS = ROOT / "docs"


def template(**changes) -> dict:
    """The example TrainingJob's spec, as a DriftMonitor's retraining template, with top-level fields replaced."""
    return {**copy.deepcopy(EXAMPLES["TrainingJob"]["spec"]), **changes}


def doc_manifests() -> list[dict]:
    """Every manifest of one of the four kinds in the docs' ```yaml blocks."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"^```yaml\n(.*?)^```", page.read_text(), flags=re.MULTILINE | re.DOTALL):
            found += [d for d in yaml.safe_load_all(block) if isinstance(d, dict) and d.get("kind") in PLURALS]
    return found


def test_every_manifest_in_the_docs_is_accepted(api_client, mlcycle_crds, namespace):
    manifests = doc_manifests()
    assert {m["kind"] for m in manifests} == set(PLURALS)
    for manifest in manifests:
        client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            "mlcycle.io", "v1alpha1", namespace, PLURALS[manifest["kind"]], manifest, dry_run="All")


# Values at the edge of what the rules allow: the API server must still take them.
EDGE_CASES = [
    ("MLProject", {"spec.defaults.resources": {"cpu": 1, "memory": "+512Mi", "gpu": 0}}),
    ("MLProject", {"spec.featureStore.materialization.schedule": "@hourly", "spec.storage.secretName": "churn.s3"}),
    ("MLProject", {"spec.featureStore.onlineStore": {"type": "redis", "connectionString": "redis:6379"}}),
    ("MLProject", {"spec.storage": {"uri": "pvc://churn-models", "pvc": {"size": "1e3"}}}),
    ("TrainingJob", {"spec.model": {"framework": "sklearn", "estimator": "sklearn.linear_model.LogisticRegression"}}),
    ("TrainingJob", {"spec.distribution.memoryPerWorker": 2147483648, "spec.activeDeadline": "500ms"}),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.version": "20261125-171657-dd6a91"}),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.uri": "pvc://churn-models/churn/models/x/3"}),
    ("ModelDeployment", {"spec.serving.resources": {"cpu": "0.5", "memory": "1.5Gi", "gpu": 0}}),
    ("ModelDeployment", {"spec.serving.maxRequestSize": "64Ki"}),
    ("ModelDeployment", {"spec.logging": {"sampleRate": 1, "uri": "s3://logs/churn", "flushInterval": "500ms"}}),
    ("ModelDeployment", {"spec.logging": {}}),
    ("DriftMonitor", {"spec.tests": {"numeric": {"method": "ks", "threshold": 1.0},
                                     "categorical": {"method": "psi", "threshold": 2.5}}}),
    ("DriftMonitor", {"spec.actions.retrain.template": template(), "spec.window": "1m0s"}),
    ("BatchPrediction", {"spec.schedule": DELETE, "spec.model.track": DELETE, "spec.model.version": "v3"}),
    ("BatchPrediction", {"spec.schedule": {"cron": "@daily", "timeZone": "Europe/Berlin",
                                           "concurrencyPolicy": "Replace", "successfulRunsHistoryLimit": 0}}),
    ("BatchPrediction", {"spec.input.uri": "s3://warehouse/customers/", "spec.maxInvalidFraction": 1,
                         "spec.batchSize": 1_000_000}),
]


@pytest.mark.parametrize(("kind", "changes"), EDGE_CASES)
def test_values_at_the_edge_of_the_rules_are_accepted(api_client, mlcycle_crds, namespace, kind, changes):
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "mlcycle.io", "v1alpha1", namespace, PLURALS[kind], mutated(kind, changes), dry_run="All")


POSITIVE = "must be a positive quantity"
EMPTY = "should be at least 1 chars long"


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
    # Quantities: signed strings fail the pattern; integers and zero fail the rule.
    ("MLProject", {"spec.defaults.resources.cpu": "-500m"}, "spec.defaults.resources.cpu", "should match"),
    ("MLProject", {"spec.defaults.resources.memory": -1}, "spec.defaults.resources.memory", POSITIVE),
    ("MLProject", {"spec.defaults.resources.cpu": "0"}, "spec.defaults.resources.cpu", POSITIVE),
    ("MLProject", {"spec.storage.pvc.size": "0Gi"}, "spec.storage.pvc.size", POSITIVE),
    ("TrainingJob", {"spec.distribution.memoryPerWorker": "-2Gi"}, "spec.distribution.memoryPerWorker",
     "should match"),
    ("TrainingJob", {"spec.distribution.memoryPerWorker": -2}, "spec.distribution.memoryPerWorker", POSITIVE),
    ("ModelDeployment", {"spec.serving.resources.cpu": "-500m"}, "spec.serving.resources.cpu", "should match"),
    ("ModelDeployment", {"spec.serving.resources.memory": "-1Gi"}, "spec.serving.resources.memory", "should match"),
    ("ModelDeployment", {"spec.serving.resources.cpu": -2}, "spec.serving.resources.cpu", POSITIVE),
    ("ModelDeployment", {"spec.serving.resources.cpu": "0m"}, "spec.serving.resources.cpu", POSITIVE),
    ("ModelDeployment", {"spec.serving.maxRequestSize": "-1Mi"}, "spec.serving.maxRequestSize", "should match"),
    ("ModelDeployment", {"spec.serving.maxRequestSize": 0}, "spec.serving.maxRequestSize", POSITIVE),
    ("ModelDeployment", {"spec.serving.maxRequestSize": "a megabyte"}, "spec.serving.maxRequestSize",
     "should match"),
    ("ModelDeployment", {"spec.logging": {"sampleRate": 0}}, "spec.logging.sampleRate", "greater than 0"),
    ("ModelDeployment", {"spec.logging": {"sampleRate": 1.5}}, "spec.logging.sampleRate", "less than or equal to 1"),
    ("ModelDeployment", {"spec.logging": {"flushInterval": "0s"}}, "spec.logging.flushInterval",
     "must be longer than 0s"),
    ("ModelDeployment", {"spec.logging": {"uri": "/var/log/predictions"}}, "spec.logging.uri", "should match"),
    ("ModelDeployment", {"spec.logging": {"entityKeys": [""]}}, "spec.logging.entityKeys[0]", EMPTY),
    ("DriftMonitor", {"spec.resources.memory": 0}, "spec.resources.memory", POSITIVE),
    ("DriftMonitor", {"spec.resources.cpu": "-250m"}, "spec.resources.cpu", "should match"),
    # Durations that must be longer than zero.
    ("DriftMonitor", {"spec.window": "0s"}, "spec.window", "must be longer than 0s"),
    ("DriftMonitor", {"spec.schedule": "0m"}, "spec.schedule", "must be longer than 0s"),
    ("ModelDeployment", {"spec.strategy.canary.analysis.interval": "0s"}, "spec.strategy.canary.analysis.interval",
     "must be longer than 0s"),
    ("TrainingJob", {"spec.activeDeadline": "0h0m"}, "spec.activeDeadline", "must be longer than 0s"),
    # p-values.
    ("DriftMonitor", {"spec.tests.numeric": {"method": "ks", "threshold": 1.5}}, "spec.tests.numeric.threshold",
     "ks and chiSquared thresholds are p-values: at most 1"),
    ("DriftMonitor", {"spec.tests.categorical": {"method": "chiSquared", "threshold": 5}},
     "spec.tests.categorical.threshold", "ks and chiSquared thresholds are p-values: at most 1"),
    # Formats: cron, object names, URIs, versions.
    ("MLProject", {"spec.featureStore.materialization.schedule": "every hour"},
     "spec.featureStore.materialization.schedule", "should match"),
    ("MLProject", {"spec.featureStore.materialization.schedule": "0 * * * * *"},
     "spec.featureStore.materialization.schedule", "should match"),
    ("MLProject", {"spec.storage.secretName": "Churn_S3"}, "spec.storage.secretName", "should match"),
    ("MLProject", {"spec.storage.uri": "pvc://Churn_Models/artifacts"}, "spec.storage.uri", "should match"),
    ("MLProject", {"spec.storage.pvc.storageClassName": "fast ssd"}, "spec.storage.pvc.storageClassName",
     "should match"),
    ("TrainingJob", {"spec.data.source.uri": "pvc://Churn_Models/data.parquet"}, "spec.data.source.uri",
     "needs a claim name"),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.uri": "churn-classifier/3"}, "spec.model.uri",
     "should match"),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.uri": "pvc://Models/churn"}, "spec.model.uri",
     "should match"),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.version": ""}, "spec.model.version", "should match"),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.version": "../3"}, "spec.model.version",
     "should match"),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.version": "3/model"}, "spec.model.version",
     "should match"),
    ("ModelDeployment", {"spec.model.track": DELETE, "spec.model.version": ".."}, "spec.model.version",
     "should match"),
    ("DriftMonitor", {"spec.reference": {"source": "Uri", "uri": "pvc://Bad_Claim/ref.parquet"}},
     "spec.reference.uri", "needs a claim name"),
    # Required strings may not be empty.
    ("MLProject", {"spec.objective.businessMetric": ""}, "spec.objective.businessMetric", EMPTY),
    ("MLProject", {"spec.objective.metric.name": ""}, "spec.objective.metric.name", EMPTY),
    ("MLProject", {"spec.owners": ["ml-platform@example.com", ""]}, "spec.owners[1]", EMPTY),
    ("MLProject", {"spec.featureStore.registry": ""}, "spec.featureStore.registry", EMPTY),
    ("MLProject", {"spec.defaults.image": ""}, "spec.defaults.image", EMPTY),
    ("TrainingJob", {"spec.data.labelColumn": ""}, "spec.data.labelColumn", EMPTY),
    ("TrainingJob", {"spec.data.source.uri": ""}, "spec.data.source.uri", EMPTY),
    ("TrainingJob", {"spec.data.source.entityColumns": [""]}, "spec.data.source.entityColumns[0]", EMPTY),
    ("TrainingJob", {"spec.data.featureService": DELETE, "spec.data.features": ["customer:tenure_months", ""]},
     "spec.data.features[1]", EMPTY),
    ("TrainingJob", {"spec.validation.columns": [{"name": ""}]}, "spec.validation.columns[0].name", EMPTY),
    ("TrainingJob", {"spec.evaluation.slices": [""]}, "spec.evaluation.slices[0]", EMPTY),
    ("ModelDeployment", {"spec.serving.onlineFeatures": {"featureService": "", "entityKeys": ["customer_id"]}},
     "spec.serving.onlineFeatures.featureService", EMPTY),
    ("ModelDeployment", {"spec.serving.onlineFeatures": {"featureService": "churn_features", "entityKeys": [""]}},
     "spec.serving.onlineFeatures.entityKeys[0]", EMPTY),
    ("ModelDeployment", {"spec.strategy.canary.analysis.metrics": [{"name": "", "type": "errorRate", "threshold": 1}]},
     "spec.strategy.canary.analysis.metrics[0].name", EMPTY),
    ("DriftMonitor", {"spec.features": ["tenure_months", ""]}, "spec.features[1]", EMPTY),
    ("DriftMonitor", {"spec.labels": {"uri": ""}}, "spec.labels.uri", EMPTY),
    # Options that exclude each other, and frameworks the trainer cannot train.
    ("MLProject", {"spec.featureStore.onlineStore": {"type": "sqlite", "connectionString": "redis:6379"}},
     "spec.featureStore.onlineStore.connectionString", "connectionString is for redis only"),
    ("TrainingJob", {"spec.model.estimator": "sklearn.ensemble.RandomForestClassifier"}, "spec.model.estimator",
     "estimator is for framework sklearn only"),
    ("TrainingJob", {"spec.model": {"framework": "sklearn", "estimator": "xgboost.XGBClassifier"}},
     "spec.model.estimator", "should match"),
    ("TrainingJob", {"spec.model.framework": "lightgbm"}, "spec.model.framework", "Unsupported value"),
    ("TrainingJob", {"spec.model.framework": "torch"}, "spec.model.framework", "Unsupported value"),
    ("TrainingJob", {"spec.model.framework": "custom"}, "spec.model.framework", "Unsupported value"),
    # Counts and ranges a user might get wrong from the docs' tables.
    ("TrainingJob", {"spec.tuning": {"numSamples": 0}}, "spec.tuning.numSamples", "greater than or equal to 1"),
    ("TrainingJob", {"spec.distribution.workers": 0}, "spec.distribution.workers", "greater than or equal to 1"),
    ("TrainingJob", {"spec.distribution.cpuPerWorker": 0}, "spec.distribution.cpuPerWorker", "greater than 0"),
    ("TrainingJob", {"spec.tuning": {"searchSpace": {"eta": {"type": "uniform", "lower": 0.3, "upper": 0.1}}}},
     "spec.tuning.searchSpace[eta].lower", "lower must be below upper"),
    ("TrainingJob", {"spec.tuning": {"searchSpace": {"eta": {"type": "loguniform", "lower": 0, "upper": 0.1}}}},
     "spec.tuning.searchSpace[eta].lower", "loguniform needs lower > 0"),
    ("TrainingJob", {"spec.tuning": {"searchSpace": {"booster": {"type": "choice", "values": []}}}},
     "spec.tuning.searchSpace[booster].values", "choice and grid need values"),
    ("TrainingJob", {"spec.tuning": {"scheduler": {"type": "asha", "reductionFactor": 1}}},
     "spec.tuning.scheduler.reductionFactor", "greater than 1"),
    ("ModelDeployment", {"spec.serving.batching.maxBatchSize": 0}, "spec.serving.batching.maxBatchSize",
     "greater than or equal to 1"),
    ("ModelDeployment", {"spec.service": {"type": "NodePort", "nodePort": 8080}}, "spec.service.nodePort",
     "greater than or equal to 30000"),
    ("ModelDeployment", {"spec.service": {"type": "ClusterIP", "nodePort": 30080}}, "spec.service.nodePort",
     "nodePort needs type NodePort or LoadBalancer"),
    ("ModelDeployment", {"spec.strategy.canary.steps": [{"weight": 10, "pause": "a while"}]},
     "spec.strategy.canary.steps[0].pause", "should match"),
    # The retraining template is a TrainingJob spec.
    ("DriftMonitor", {"spec.actions.retrain.template": {}}, "spec.actions.retrain.template.project",
     "Required value"),
    ("DriftMonitor", {"spec.actions.retrain.template": template(**{"model": {"framework": "torch"}})},
     "spec.actions.retrain.template.model.framework", "Unsupported value"),
    ("DriftMonitor", {"spec.actions.retrain.template": template(output={"modelName": "Churn_Model"})},
     "spec.actions.retrain.template.output.modelName", "should match"),
    ("DriftMonitor", {"spec.actions.retrain.template": template(data={"source": {"uri": "s3://b/rows"},
                                                                      "labelColumn": ""})},
     "spec.actions.retrain.template.data.labelColumn", EMPTY),
    ("DriftMonitor", {"spec.actions.retrain.template": template(activeDeadline="0s")},
     "spec.actions.retrain.template.activeDeadline", "must be longer than 0s"),
    # BatchPrediction: the model as a ModelDeployment's, storage URIs, the schedule, the scorer's own columns.
    ("BatchPrediction", {"spec.model.version": "3"}, "spec.model", "set exactly one of model.version"),
    ("BatchPrediction", {"spec.model.track": DELETE}, "spec.model", "set exactly one of model.version"),
    ("BatchPrediction", {"spec.input.uri": "customers.parquet"}, "spec.input.uri", "should match"),
    ("BatchPrediction", {"spec.output.uri": "pvc://Bad_Claim/out"}, "spec.output.uri", "should match"),
    ("BatchPrediction", {"spec.input.passthrough": ["customer_id", "prediction"]}, "spec.input.passthrough",
     "columns the scorer adds"),
    ("BatchPrediction", {"spec.schedule.cron": "every night"}, "spec.schedule.cron", "should match"),
    ("BatchPrediction", {"spec.schedule.concurrencyPolicy": "Queue"}, "spec.schedule.concurrencyPolicy",
     "Unsupported value"),
    ("BatchPrediction", {"spec.maxInvalidFraction": 1.5}, "spec.maxInvalidFraction", "less than or equal to 1"),
    ("BatchPrediction", {"spec.batchSize": 0}, "spec.batchSize", "greater than or equal to 1"),
    ("BatchPrediction", {"spec.resources.memory": "0Gi"}, "spec.resources.memory", POSITIVE),
    ("BatchPrediction", {"spec.activeDeadline": "0s"}, "spec.activeDeadline", "must be longer than 0s"),
    ("BatchPrediction", {"spec.input": DELETE}, "spec.input", "Required value"),
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
