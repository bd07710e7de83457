"""Generate structural CustomResourceDefinitions from the pydantic models (the one source of the API).

``python -m mlcycle_operator.api.crd OUT_DIR [OUT_DIR ...]`` writes one YAML file per kind;
``--check`` instead fails when a file differs from what would be written.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault

from .batchprediction import BatchPredictionSpec, BatchPredictionStatus
from .common import GROUP, VERSION
from .driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from .mlproject import MLProjectSpec, MLProjectStatus
from .modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from .trainingjob import TrainingJobSpec, TrainingJobStatus

CATEGORY = "mlcycle"


@dataclass(frozen=True)
class Kind:
    """One custom resource kind and everything its CRD says about it."""

    kind: str
    plural: str
    short_name: str
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: list[dict[str, Any]] = field(default_factory=list)
    # Free-form spec fields (a path of wire names) that hold another kind's spec, and that kind's spec model.
    embedded: dict[tuple[str, ...], type[BaseModel]] = field(default_factory=dict)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _col(name: str, json_path: str, type_: str = "string", priority: int = 0, description: str = "") -> dict:
    column = {"name": name, "type": type_, "jsonPath": json_path}
    if priority:
        column["priority"] = priority
    if description:
        column["description"] = description
    return column


AGE = _col("Age", ".metadata.creationTimestamp", "date")
READY = _col("Ready", '.status.conditions[?(@.type=="Ready")].status')

KINDS: list[Kind] = [
    Kind(
        "MLProject", "mlprojects", "mlp", MLProjectSpec, MLProjectStatus,
        "An ML project: objective, storage, feature store, workload defaults and retraining policy.",
        [
            _col("Phase", ".status.phase"),
            _col("Metric", ".spec.objective.metric.name"),
            _col("Champion", ".status.champion.version"),
            _col("Jobs", ".status.counts.trainingJobs", "integer"),
            _col("Deployments", ".status.counts.modelDeployments", "integer"),
            AGE,
            _col("Storage", ".spec.storage.uri", priority=1),
        ],
    ),
    Kind(
        "TrainingJob", "trainingjobs", "tj", TrainingJobSpec, TrainingJobStatus,
        "One training run: validated data, (tuned) model, evaluation against baselines and gates.",
        [
            _col("Project", ".spec.project"),
            _col("Phase", ".status.phase"),
            _col("Model", ".spec.output.modelName"),
            _col("Version", ".status.model.version"),
            _col("Gates", ".status.gatesPassed", "boolean"),
            _col("Trials", ".status.trials.finished", "integer"),
            AGE,
            _col("Framework", ".spec.model.framework", priority=1),
        ],
    ),
    Kind(
        "ModelDeployment", "modeldeployments", "md", ModelDeploymentSpec, ModelDeploymentStatus,
        "Online serving of a model with canary, shadow, blue-green or recreate rollouts.",
        [
            _col("Project", ".spec.project"),
            _col("Phase", ".status.phase"),
            _col("Stable", ".status.stableVersion"),
            _col("Candidate", ".status.candidateVersion"),
            _col("Traffic", ".status.trafficSummary"),
            _col("Ready", ".status.readyReplicas", "integer"),
            AGE,
            _col("Strategy", ".spec.strategy.type", priority=1),
            _col("Endpoint", ".status.endpoint", priority=1),
        ],
    ),
    Kind(
        "DriftMonitor", "driftmonitors", "dm", DriftMonitorSpec, DriftMonitorStatus,
        "Drift monitoring of one ModelDeployment, with retraining on drift.",
        [
            _col("Deployment", ".spec.deployment"),
            _col("Phase", ".status.phase"),
            _col("Drift", '.status.conditions[?(@.type=="DriftDetected")].status'),
            _col("Samples", ".status.lastReport.samples", "integer"),
            _col("Last-Retrain", ".status.lastRetrain.trainingJob"),
            AGE,
        ],
        embedded={("actions", "retrain", "template"): TrainingJobSpec},
    ),
    Kind(
        "BatchPrediction", "batchpredictions", "bp", BatchPredictionSpec, BatchPredictionStatus,
        "Batch scoring of a Parquet input with one model version, once or on a schedule.",
        [
            _col("Project", ".spec.project"),
            _col("Phase", ".status.phase"),
            _col("Version", ".status.modelVersion"),
            _col("Rows", ".status.rowsScored", "integer"),
            _col("Rows/s", ".status.rowsPerSecond", "number"),
            AGE,
            _col("Schedule", ".spec.schedule.cron", priority=1),
            _col("Refused", ".status.rowsRefused", "integer", priority=1),
            _col("Output", ".status.output", priority=1),
        ],
    ),
]


# ----- pydantic JSON Schema -> Kubernetes structural OpenAPI v3 ------------------------------------

_DROP = {"title", "examples", "$defs"}
_FIRST = ("type", "description")


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also publish defaults that come from a default_factory, so the API server fills nested sections."""

    def get_default_value(self, schema):
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()
        return schema.get("default", NoDefault)

    def encode_default(self, dft):
        # Unset optional fields are absent on the wire, never null.
        return _drop_none(super().encode_default(dft))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def structural_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The model's JSON Schema rewritten into what the API server accepts as a structural schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults)
    defs = schema.get("$defs", {})
    converted = _convert(schema, defs)
    return converted if defaults else _without_defaults(converted)


def _without_defaults(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    return node


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # Field-level keys (description, default) win over the referenced model's own.
        target.update({k: v for k, v in node.items() if k != "description" or v})
        node = target
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
        return _convert(node, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) == 1:  # Optional[X]: optional-ness is expressed by `required`, not by null
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", ...) is None:
                rest.pop("default")
            return _convert({**options[0], **rest}, defs)
        raise ValueError(f"unions other than Optional or int-or-string are not structural: {node['anyOf']}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020-12 gives the bound; OpenAPI v3.0 (what the API server speaks) a flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _convert(prop, defs) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        elif key == "anyOf":
            out[key] = [{k: v for k, v in o.items() if k in ("type", "pattern")} for o in value]
        else:
            out[key] = value
    if "default" in out and out["default"] is None:
        del out["default"]
    if out.get("format") == "date-time":
        out["type"] = "string"
    if "items" in out and out["items"] == {}:
        out["items"] = {"x-kubernetes-preserve-unknown-fields": True}
    return {**{k: out[k] for k in _FIRST if k in out}, **{k: v for k, v in out.items() if k not in _FIRST}}


def _embed(schema: dict[str, Any], path: tuple[str, ...], model: type[BaseModel]) -> None:
    """Give the free-form field at `path` the structural schema of `model`, without its transition rules
    (oldSelf): those guard the embedded kind's own objects, not this copy of a spec. Defaults stay: its other
    rules read defaulted fields, and the object created from the copy would get the same ones anyway."""
    node = schema
    for key in path:
        node = node["properties"][key]
    embedded = structural_schema(model)
    rules = [r for r in embedded.pop("x-kubernetes-validations", []) if "oldSelf" not in r["rule"]]
    description = node.get("description")
    node.clear()
    node.update(embedded)
    if description:
        node["description"] = description
    if rules:
        node["x-kubernetes-validations"] = rules


def crd(kind: Kind) -> dict[str, Any]:
    """The full CustomResourceDefinition of one kind."""
    spec = structural_schema(kind.spec)
    for path, model in kind.embedded.items():
        _embed(spec, path, model)
    # Status is written by the operator and the workloads; defaults there would only add noise.
    status = structural_schema(kind.status, defaults=False)
    status["description"] = status.get("description") or f"Observed state of a {kind.kind}."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "mlcycle", "app.kubernetes.io/part-of": "mlcycle"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": [kind.short_name],
                "categories": [CATEGORY],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": kind.columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": kind.description,
                    "required": ["spec"],
                    "x-kubernetes-validations": [{
                        "rule": "size(self.metadata.name) <= 63",
                        "message": "metadata.name must be at most 63 characters: it becomes Service names and labels",
                    }],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "API version: mlcycle.io/v1alpha1."},
                        "kind": {"type": "string", "description": f"Kind: {kind.kind}."},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    }


HEADER = "# Generated by `make crds` from operator/mlcycle_operator/api; do not edit.\n"


def render(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="+", type=Path, help="directories to write the CRD YAML into")
    parser.add_argument("--check", action="store_true", help="fail if any file is missing or stale")
    args = parser.parse_args(argv)
    stale = []
    for out in args.out:
        for kind in KINDS:
            path = out / f"{kind.crd_name}.yaml"
            text = render(kind)
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
            else:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if stale:
        print("stale generated CRDs (run `make crds`):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
