"""The CRDs generated from the API models: structural, described, and in agreement with the examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from mlcycle_operator.api import crd as crdgen
from mlcycle_operator.api.common import PositiveDuration, Quantity, Text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "churn" / "manifests").glob("*.yaml"))
SPEC_MODELS = {k.kind: k.spec for k in crdgen.KINDS}


def walk(schema: dict, path: str = ""):
    """Yield (path, node) for every schema node below the root."""
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module", params=crdgen.KINDS, ids=lambda k: k.kind)
def generated(request):
    kind = request.param
    return kind, crdgen.crd(kind)


def _root(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_names_short_names_and_category(generated):
    kind, crd = generated
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{kind.plural}.mlcycle.io"
    assert names["shortNames"] == [kind.short_name]
    assert names["categories"] == ["mlcycle"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_every_property_has_a_description(generated):
    _, crd = generated
    for section in ("spec", "status"):
        missing = [p for p, node in walk(_root(crd)["properties"][section], section)
                   if p.count(".") and not p.endswith(("[]", "{}")) and not node.get("description")]
        assert not missing, f"properties without a description: {missing}"


def test_schema_is_structural(generated):
    _, crd = generated
    for path, node in walk(_root(crd)["properties"]["spec"], "spec"):
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path} has no type"
        assert "$ref" not in node and "allOf" not in node, path
        assert node.get("default", 0) is not None, f"{path} defaults to null"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"


def test_status_has_observed_generation_phase_and_conditions(generated):
    _, crd = generated
    status = _root(crd)["properties"]["status"]["properties"]
    assert {"observedGeneration", "phase", "conditions"} <= status.keys()
    assert "enum" in status["phase"], "phase is an enum, so a typo cannot land in status"
    assert not any("default" in node for _, node in walk(_root(crd)["properties"]["status"]))


def test_nested_sections_get_their_defaults_from_the_schema():
    schema = _root(crdgen.crd(next(k for k in crdgen.KINDS if k.kind == "ModelDeployment")))
    serving = schema["properties"]["spec"]["properties"]["serving"]
    assert serving["default"]["replicas"] == 1
    assert serving["default"]["resources"] == {"cpu": "1", "memory": "1Gi", "gpu": 0}
    assert "onlineFeatures" not in serving["default"], "unset optionals are absent, not null"


def test_exclusive_bounds_use_the_openapi_v3_0_form():
    schema = _root(crdgen.crd(next(k for k in crdgen.KINDS if k.kind == "TrainingJob")))
    fraction = schema["properties"]["spec"]["properties"]["data"]["properties"]["split"]["properties"][
        "validationFraction"]
    assert fraction["minimum"] == 0 and fraction["exclusiveMinimum"] is True
    assert fraction["maximum"] == 1 and fraction["exclusiveMaximum"] is True


def test_the_retraining_template_is_a_training_job_spec_that_may_change():
    schema = _root(crdgen.crd(next(k for k in crdgen.KINDS if k.kind == "DriftMonitor")))
    template = schema["properties"]["spec"]["properties"]["actions"]["properties"]["retrain"]["properties"][
        "template"]
    job = crdgen.structural_schema(crdgen.TrainingJobSpec)
    assert template["properties"] == job["properties"]
    assert template["required"] == ["project", "data", "model", "output"]
    assert template["properties"]["model"]["properties"]["framework"]["enum"] == ["xgboost", "sklearn"]
    # TrainingJob's own `self == oldSelf` would freeze the template inside every DriftMonitor.
    assert not any("oldSelf" in r["rule"] for r in template.get("x-kubernetes-validations", []))


def test_what_the_api_server_refuses_the_models_refuse():
    """Field-level rules hold in the operator too: quantities above zero, durations above zero, no empty names."""
    for adapter, bad, good in ((TypeAdapter(Quantity), ("-500m", "-1Gi", -2, 0, "0m", "lots"), ("500m", 2, "4Gi")),
                               (TypeAdapter(PositiveDuration), ("0s", "0h0m", "forever"), ("1m", "500ms")),
                               (TypeAdapter(Text), ("",), ("x",))):
        for value in bad:
            with pytest.raises(ValidationError):
                adapter.validate_python(value)
        for value in good:
            assert adapter.validate_python(value) == value


def test_checked_in_crds_are_current():
    for directory in ("crds", "charts/mlcycle/crds"):
        for kind in crdgen.KINDS:
            path = ROOT / directory / f"{kind.crd_name}.yaml"
            assert path.read_text() == crdgen.render(kind), f"{path} is stale: run `make crds`"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_manifests_parse_with_the_api_models(path):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == "mlcycle.io/v1alpha1"
    spec = SPEC_MODELS[manifest["kind"]].model_validate(manifest["spec"])
    # Round trip through the wire form keeps what the user wrote.
    assert spec.model_dump(by_alias=True, exclude_unset=True) == manifest["spec"]
