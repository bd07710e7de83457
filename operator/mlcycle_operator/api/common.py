"""Types shared by the four kinds: the camelCase base model, quantities, durations, conditions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
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

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A Kubernetes resource quantity: 2, "500m", "4Gi". Int-or-string, as in core/v1.
Quantity = Annotated[
    int | str,
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
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
