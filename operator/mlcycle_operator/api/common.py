"""Types shared by the kinds: the camelCase base model, quantities, durations, conditions."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "mlcycle.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Go's time.ParseDuration subset that people write in manifests: "90s", "5m", "1h30m", "500ms".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, examples=["30s", "5m", "1h30m"]),
]


def _positive_duration(text: str) -> str:
    if not re.search(r"[1-9]", text):
        raise ValueError(f"{text!r} is no time at all; a duration here must be longer than 0s")
    return text


# A duration that must be longer than zero: a window, a period, a deadline ("0s" would spin or expire at once).
# The pattern runs first; the rule only judges strings that match it, so "forever" gets one error, not two.
PositiveDuration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=64, examples=["30s", "5m", "1h30m"]),
    AfterValidator(_positive_duration),
    WithJsonSchema({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": 64,
        "x-kubernetes-validations": [{
            "rule": f"!self.matches(r'{DURATION_PATTERN}') || duration(self) > duration('0s')",
            "message": "must be longer than 0s",
        }],
    }),
]

# Kubernetes' quantity grammar without the minus sign: no resource or capacity of ours can be negative.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_MANTISSA = re.compile(r"\+?([0-9]*\.?[0-9]*)")


def _positive_quantity(value: int | str) -> int | str:
    # bool is an int to Python, but `cpu: true` in a manifest is a mistake, not one CPU.
    if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
        raise ValueError(f"{value!r}: must be a positive quantity such as 500m, 2 or 4Gi")
    if isinstance(value, str):
        if not re.fullmatch(QUANTITY_PATTERN.strip("^$"), value):
            raise ValueError(f"{value!r} is not a quantity; write a positive quantity such as 500m, 2 or 4Gi")
        if not re.search(r"[1-9]", _MANTISSA.match(value).group(1)):
            raise ValueError(f"{value!r}: must be a positive quantity such as 500m, 2 or 4Gi")
    return value


# A Kubernetes resource quantity above zero: 2, "500m", "4Gi". Int-or-string, as in core/v1. The pattern (no
# minus sign) applies to strings only; the rule refuses what it lets through: 0, -2, "0m".
Quantity = Annotated[
    int | str,
    AfterValidator(_positive_quantity),
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self > 0 : (!isQuantity(self) || quantity(self).isGreaterThan(quantity('0')))",
            "message": "must be a positive quantity such as 500m, 2 or 4Gi",
        }],
    }),
]

# Free-form JSON (hyper-parameters, reports written by the runtime): kept as the user wrote it.
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]

# A label value or name as Kubernetes accepts it (DNS-1123 label for names we derive objects from).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Name = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]

# A Kubernetes object name (DNS-1123 subdomain): Secrets, PersistentVolumeClaims.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]

# A URI of a model or data in storage; pvc://<claim>/<path> must name a valid claim.
STORAGE_URI_PATTERN = (
    r"^(s3://.+|file://.+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/.*)?)$"
)


def pvc_claim_rule(field: str) -> dict:
    """CEL rule: when `field` is a pvc:// URI, its first segment is a valid PersistentVolumeClaim name."""
    return {
        "rule": f"!has(self.{field}) || !self.{field}.startsWith('pvc://')"
                f" || self.{field}.matches(r'{STORAGE_URI_PATTERN}')",
        "message": "pvc://<claim>/<path> needs a claim name of lower case letters, digits, '-' and '.'",
        "fieldPath": f".{field}",
    }


# A string that must say something: a required name, column, URI or metric may not be "".
Text = Annotated[str, Field(min_length=1)]


class ApiModel(BaseModel):
    """Base of every spec and status model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def validations(*rules: dict) -> ConfigDict:
    """The base config plus CEL rules (x-kubernetes-validations) that the generated CRD carries."""
    return ConfigDict(**ApiModel.model_config, json_schema_extra={"x-kubernetes-validations": list(rules)})


class Resources(ApiModel):
    """CPU, memory and GPUs for one pod or worker."""

    cpu: Quantity = Field("1", description="CPU request (and limit), e.g. 2 or 500m.")
    memory: Quantity = Field("1Gi", description="Memory request and limit, e.g. 4Gi.")
    gpu: int = Field(0, ge=0, le=16, description="NVIDIA GPUs (nvidia.com/gpu) requested; 0 for CPU only.")


class LabelSelector(ApiModel):
    """Selects objects by their labels; every listed label must match."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels an object must carry, all of them, to be selected."
    )


class Condition(ApiModel):
    """One aspect of an object's state, in the standard Kubernetes shape."""

    type: str = Field(description="Condition type, e.g. Ready, Progressing, Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field("", description="One CamelCase word that says why, for machines.")
    message: str = Field("", description="What happened and what to do about it, for people.")
    last_transition_time: datetime | None = Field(None, description="When status last changed.")
    observed_generation: int | None = Field(None, description="The spec generation this was computed from.")


class StatusBase(ApiModel):
    """Fields every kind's status has."""

    observed_generation: int | None = Field(None, description="The metadata.generation last reconciled.")
    phase: str | None = Field(None, description="Where the object is in its lifecycle, in one word.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions; see docs/.")
