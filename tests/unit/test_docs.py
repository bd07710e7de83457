"""The user documentation in docs/ stays true to the API: its examples parse with the operator's models, every
spec and status field and printer column is on its kind's page, and every reason the operator writes is explained."""

from __future__ import annotations

import ast
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from mlcycle_operator import conditions, rollout
from mlcycle_operator.api import crd as crdgen
from mlcycle_operator.api.common import API_VERSION

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OPERATOR = ROOT / "operator" / "mlcycle_operator"
KINDS = {k.kind: k for k in crdgen.KINDS}
PAGES = {kind: DOCS / f"{kind.lower()}.md" for kind in KINDS}
TROUBLESHOOTING = DOCS / "troubleshooting.md"
# Which kind's page explains the reasons a module writes; the shared handler helpers may be explained anywhere.
MODULE_KIND = {
    "handlers/mlproject.py": "MLProject", "storage.py": "MLProject",
    "handlers/trainingjob.py": "TrainingJob", "diagnose.py": "TrainingJob",
    "handlers/modeldeployment.py": "ModelDeployment", "rollout.py": "ModelDeployment",
    "handlers/driftmonitor.py": "DriftMonitor", "retraining.py": "DriftMonitor",
    "handlers/batchprediction.py": "BatchPrediction", "batchstatus.py": "BatchPrediction",
    "handlers/_status.py": None, "handlers/_children.py": None, "handlers/_events.py": None,
}


# --- what the pages say ----------------------------------------------------------------------------------------


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def manifests(text: str) -> Iterator[dict[str, Any]]:
    """Every document of a yaml block whose kind is one of the four."""
    for block in yaml_blocks(text):
        for document in yaml.safe_load_all(block):
            if isinstance(document, dict) and document.get("kind") in KINDS:
                yield document


def unknown_keys(model: type[BaseModel], data: dict[str, Any], where: str) -> list[str]:
    """Keys the model does not have, at any depth: pydantic ignores them, so a typo would pass validation."""
    fields = {field.alias or name: field for name, field in model.model_fields.items()}
    problems = []
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            problems.append(f"{where}.{key}")
        else:
            problems += _unknown_in(field.annotation, value, f"{where}.{key}")
    return problems


def _unknown_in(annotation: Any, value: Any, where: str) -> list[str]:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _unknown_in(args[0], value, where)
    if origin in (Union, types.UnionType):
        found = [_unknown_in(arg, value, where) for arg in args if arg is not type(None)]
        return min(found, key=len) if found else []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
        return unknown_keys(annotation, value, where)
    if origin is list and isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _unknown_in(args[0], item, f"{where}[{i}]")]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return [p for key, item in value.items() for p in _unknown_in(args[1], item, f"{where}[{key}]")]
    return []


def field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """The wire names of every field of a model and of the models nested in it."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = set()
    for name, field in model.model_fields.items():
        names.add(field.alias or name)
        for nested in _models_in(field.annotation):
            names |= field_names(nested, seen)
    return names


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def undocumented_status_fields(kind: str, text: str) -> list[str]:
    """Top-level status fields that the page never names in backticks."""
    names = [field.alias or name for name, field in KINDS[kind].status.model_fields.items()]
    return [n for n in names if not re.search(rf"`(status\.)?{re.escape(n)}`", text)]


def example_problems(kind: str, text: str) -> list[str]:
    """Why the page's manifests do not hold as the API models read them (empty when they do)."""
    problems = []
    examples = list(manifests(text))
    if not any(m["kind"] == kind for m in examples):
        problems.append(f"no ```yaml example of kind {kind}")
    for manifest in examples:
        name = f"{manifest['kind']}/{(manifest.get('metadata') or {}).get('name')}"
        if manifest.get("apiVersion") != API_VERSION:
            problems.append(f"{name}: apiVersion {manifest.get('apiVersion')!r} is not {API_VERSION}")
        models = KINDS[manifest["kind"]]
        for part, model in (("spec", models.spec), ("status", models.status)):
            if part not in manifest:
                continue
            try:
                model.model_validate(manifest[part])
            except ValueError as err:
                problems.append(f"{name}: {part} does not validate: {err}")
            problems += [f"{name}: unknown field {p}" for p in unknown_keys(model, manifest[part], part)]
    return problems


# --- what the operator writes ----------------------------------------------------------------------------------


def _spellings(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The names a module gives the conditions module (`from .. import conditions as cond`: cond.Reason.X) and its
    Reason enum (`from .conditions import Reason`: Reason.X). Read from the imports, since rollout.py's own
    Reason.X is another enum."""
    modules: set[str] = set()
    enums: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "conditions" and node.module in (None, "mlcycle_operator"):
                    modules.add(alias.asname or alias.name)
                elif alias.name == "Reason" and (node.module or "").rsplit(".", 1)[-1] == "conditions":
                    enums.add(alias.asname or alias.name)
    return modules, enums


def _member(node: ast.AST, spellings: tuple[set[str], set[str]]) -> str | None:
    """The value of the conditions.Reason member the node names, as its module spells it; None when it names none."""
    modules, enums = spellings
    if isinstance(node, ast.Attribute):
        owner = node.value
        if (isinstance(owner, ast.Name) and owner.id in enums) or (
                isinstance(owner, ast.Attribute) and owner.attr == "Reason" and isinstance(owner.value, ast.Name)
                and owner.value.id in modules):
            return conditions.Reason[node.attr].value
    return None


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" constants: a reason kept in one is as much a literal as one written in place."""
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def _arms(node: ast.AST) -> Iterator[ast.AST]:
    """The expressions a reason expression may take its value from: both arms of a conditional, each operand of
    an `or`. An f-string such as f"Retraining{reason}" is built from reasons found elsewhere: one leaf, no string."""
    if isinstance(node, ast.IfExp):
        yield from _arms(node.body)
        yield from _arms(node.orelse)
    elif isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _arms(value)
    else:
        yield node


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


# Calls whose argument at this index, or whose `reason=`, is a reason: conditions, Events (kopf.event: the keyword
# only), waiting states, problems, retrain and rollout decisions. Not a history entry's `reason=`: a sentence.
REASON_ARGUMENT = {"set_condition": 3, "normal": 1, "warning": 1, "waiting_for": 4, "Problem": 0,
                   "RetrainDecision": 1, "Decision": 1, "event": None}


def _reason_expressions(tree: ast.Module) -> Iterator[ast.AST]:
    """Every expression of a module that gives a reason: at REASON_ARGUMENT's positions and `reason=` keywords, and
    in the (type, reason, message) Events that diagnose builds."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in REASON_ARGUMENT:
            index = REASON_ARGUMENT[_call_name(node)]
            if index is not None and len(node.args) > index:
                yield node.args[index]
            yield from (k.value for k in node.keywords if k.arg == "reason")
        elif isinstance(node, ast.Tuple) and len(node.elts) == 3 and isinstance(node.elts[0], ast.Constant) \
                and node.elts[0].value in ("Normal", "Warning"):
            yield node.elts[1]


def literal_reasons(source: str) -> list[str]:
    """Reasons a module writes as plain strings, in place or through a module-level constant, instead of as a
    member of conditions.Reason (or rollout.Reason): empty when it writes none."""
    tree = ast.parse(source)
    constants = _module_strings(tree)
    found = []
    for expression in _reason_expressions(tree):
        for node in _arms(expression):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
            elif isinstance(node, ast.Name) and node.id in constants:
                found.append(constants[node.id])
    return found


def reasons_written(source: str) -> set[str]:
    """Every reason one module can put into a condition, an Event or a decision: each conditions.Reason member it
    names, wherever it names it, and any plain string it writes as a reason (which test_reasons_are_members
    refuses, but the docs must explain all the same)."""
    tree = ast.parse(source)
    spellings = _spellings(tree)
    found = {value for node in ast.walk(tree) if (value := _member(node, spellings)) is not None}
    return found | set(literal_reasons(source))


def operator_modules() -> dict[str, str]:
    """path under mlcycle_operator/ -> source, for every module of the operator."""
    return {path.relative_to(OPERATOR).as_posix(): path.read_text() for path in sorted(OPERATOR.rglob("*.py"))}


def all_reasons() -> dict[str, str | None]:
    """reason -> the kind whose page may explain it (None: any page)."""
    owners: dict[str, str | None] = {}
    for module, kind in MODULE_KIND.items():
        for reason in reasons_written((OPERATOR / module).read_text()):
            owners[reason] = kind if owners.get(reason, kind) == kind else None
    for reason in rollout.Reason:
        owners.setdefault(reason.value, "ModelDeployment")
    return owners


def unexplained(reasons: dict[str, str | None], pages: dict[str, str], troubleshooting: str) -> list[str]:
    missing = []
    for reason, kind in sorted(reasons.items()):
        texts = [troubleshooting, *(pages.values() if kind is None else [pages[kind]])]
        if not any(f"`{reason}`" in text for text in texts):
            missing.append(f"{reason} (written for {kind or 'any kind'})")
    return missing


# --- the tests -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return {kind: path.read_text() for kind, path in PAGES.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_examples_parse_with_the_api_models(pages, kind):
    assert example_problems(kind, pages[kind]) == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_spec_field_is_in_an_example(pages, kind):
    text = "\n".join(yaml_blocks(pages[kind]))
    missing = sorted(n for n in field_names(KINDS[kind].spec) if not re.search(rf"\b{re.escape(n)}\b", text))
    assert missing == [], f"docs/{kind.lower()}.md: spec fields absent from its ```yaml examples: {missing}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_status_field_is_explained(pages, kind):
    assert undocumented_status_fields(kind, pages[kind]) == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_printer_column_is_explained(pages, kind):
    missing = [c["name"] for c in KINDS[kind].columns if f"`{c['name']}`" not in pages[kind]]
    assert missing == [], f"docs/{kind.lower()}.md does not name the columns {missing}"


def test_every_reason_the_operator_writes_is_explained(pages):
    reasons = all_reasons()
    assert {"BadData", "ImagePullFailed", "RolledBack", "CoolingDown", "GatesFailed", "PhaseChanged"} <= set(reasons)
    assert unexplained(reasons, pages, TROUBLESHOOTING.read_text()) == []


def test_reasons_are_members():
    """A reason is a conditions.Reason (or rollout.Reason) member, never a string written where it is used: each
    has one spelling, a comment in the enum, and a place where the scan above finds it."""
    assert {module: found for module, source in operator_modules().items()
            if (found := literal_reasons(source))} == {}


def test_every_member_is_written_by_a_module_the_docs_check_covers():
    """No member is dead, and none is written only where all_reasons does not look."""
    written = {module: reasons_written(source) for module, source in operator_modules().items()}
    assert sorted(module for module, found in written.items() if found and module not in MODULE_KIND) == []
    assert sorted(set(conditions.Reason) - set().union(*written.values())) == []


def test_architecture_and_troubleshooting_exist():
    architecture = (DOCS / "architecture.md").read_text()
    assert "```mermaid" in architecture and "```text" in architecture
    for page in [*PAGES.values(), TROUBLESHOOTING]:
        assert page.name in architecture, f"docs/architecture.md does not list {page.name}"


# --- the checks above can fail ---------------------------------------------------------------------------------


def test_a_missing_status_field_is_caught(pages):
    text = re.sub(r"`(status\.)?trafficSummary`", "the summary", pages["ModelDeployment"])
    assert undocumented_status_fields("ModelDeployment", text) == ["trafficSummary"]


def test_an_unknown_or_invalid_field_in_an_example_is_caught(pages):
    typo = pages["TrainingJob"].replace("    minRows: 1000", "    minRow: 1000", 1)
    assert [p for p in example_problems("TrainingJob", typo) if "unknown field spec.validation.minRow" in p]
    invalid = pages["DriftMonitor"].replace("  minSamples: 500", "  minSamples: lots", 1)
    assert [p for p in example_problems("DriftMonitor", invalid) if "spec does not validate" in p]
    nested = "```yaml\napiVersion: mlcycle.io/v1alpha1\nkind: TrainingJob\nspec:\n  tuning:\n    searchSpace:\n" \
             "      eta: {type: uniform, lowr: 0.1}\n```\n"
    assert "unknown field spec.tuning.searchSpace[eta].lowr" in " ".join(example_problems("TrainingJob", nested))


def test_the_scan_follows_the_enum_as_each_module_spells_it():
    source = ("from .. import conditions as cond\nfrom ..conditions import Reason as R\nfrom .rollout import Reason\n"
              "x = R.HEALTHY\nset_condition(c, t, s, cond.Reason.FAILED if s else Reason.ROLLED_BACK, m, g)\n")
    assert reasons_written(source) == {"Healthy", "Failed"}  # rollout's own Reason is not conditions.Reason
    assert literal_reasons(source) == []


def test_a_literal_reason_is_caught():
    source = ('SLOW = "TooSlow"\nProblem(SLOW, "m", True)\nnormal(body, "Fresh" if x else cond.Reason.HEALTHY, m)\n'
              'kopf.event(body, type="Normal", reason="Kept", message=m)\nevents.append(("Warning", "Broke", m))\n'
              'warning(body, f"Retraining{decision.reason}", m)\nHistoryEntry(reason="a sentence, not a reason")\n')
    assert sorted(literal_reasons(source)) == ["Broke", "Fresh", "Kept", "TooSlow"]


def test_an_unexplained_reason_is_caught(pages):
    troubleshooting = TROUBLESHOOTING.read_text()
    without = {kind: text.replace("`CoolingDown`", "cooling down") for kind, text in pages.items()}
    missing = unexplained(all_reasons(), without, troubleshooting.replace("`CoolingDown`", "cooling down"))
    assert missing == ["CoolingDown (written for DriftMonitor)"]
