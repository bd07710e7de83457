"""What the model server does with a request, without any I/O: parse, check the version, validate, shape the answer.

Every way a request can be wrong becomes a `Rejection` (a 4xx with `{"error", "fields"}` naming each bad field
with its record index), so a bad request never reaches the learner and never turns into a 5xx.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlcycle_runtime.model import ModelCard

VERSION_HEADER = "x-mlcycle-version"
# A request is one HTTP body held in memory: past this many records a client should split its batch.
MAX_RECORDS = 10_000
# Enough to fix a request by; a 10,000-record body of garbage should not answer with 10,000 lines.
MAX_FIELD_MESSAGES = 100


@dataclass
class Rejection(Exception):
    """A request the server refuses; `reason` is the low-cardinality label of the error metric."""

    status: int
    error: str
    reason: str
    fields: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.error

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "fields": self.fields}


def decode_body(body: bytes) -> Any:
    """The request's JSON; a body that is not JSON is a 400 saying where it broke."""
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise Rejection(400, "request body is not UTF-8 JSON", "invalid_json") from None
    except json.JSONDecodeError as err:
        raise Rejection(400, f"request body is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
                        "invalid_json") from None
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise Rejection(400, f"request body holds an integer of more than {sys.get_int_max_str_digits()} digits",
                        "invalid_json") from None
    except RecursionError:  # arrays or objects nested thousands deep: valid JSON no record can be
        raise Rejection(400, "request body nests arrays or objects too deeply to be records", "invalid_json") from None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class RequestHandler:
    """Turns a request payload into validated records of one model version, and predictions into the answer."""

    def __init__(self, card: ModelCard, entity_keys: Sequence[str] = ()) -> None:
        self.card = card
        self.schema = card.features
        self.entity_keys = tuple(entity_keys)
        self._feature_names = frozenset(self.schema.names)

    @property
    def version(self) -> str:
        return self.card.version

    def check_version(self, requested: Any) -> None:
        """A request pinned to another version must not be answered by this one (the router sent it astray)."""
        if requested is None or requested == "":
            return
        if str(requested) != self.card.version:
            raise Rejection(404, f"model version {requested!r} is not served here; this server serves "
                                 f"{self.card.name} version {self.card.version!r}", "unknown_version",
                            [f"version: {requested!r} is not {self.card.version!r}"])

    def records(self, payload: Any, header_version: str | None = None) -> list[Any]:
        """The records of a decoded request body, after the shape and version checks."""
        self.check_version(header_version)
        if not isinstance(payload, Mapping):
            raise Rejection(400, f'expected a JSON object {{"records": [...]}}, got {_type_name(payload)}',
                            "bad_shape", [f"(body): expected an object, got {_type_name(payload)}"])
        self.check_version(payload.get("version"))
        if "records" not in payload:
            raise Rejection(400, 'the request has no "records"', "bad_shape", ["records: missing"])
        records = payload["records"]
        if not isinstance(records, list):
            raise Rejection(400, '"records" must be a list of objects', "bad_shape",
                            [f"records: expected a list, got {_type_name(records)}"])
        if not records:
            raise Rejection(400, '"records" is empty: send at least one record', "empty", ["records: empty"])
        if len(records) > MAX_RECORDS:
            raise Rejection(400, f"{len(records)} records in one request; at most {MAX_RECORDS}", "too_many",
                            [f"records: {len(records)} > {MAX_RECORDS}"])
        return records

    def needs_lookup(self, record: Any) -> bool:
        """An entity-keyed record: it carries every entity key and lacks a feature the online store can supply."""
        return (bool(self.entity_keys) and isinstance(record, Mapping)
                and all(k in record for k in self.entity_keys)
                and not self._feature_names.issubset(record.keys()))

    def entity(self, record: Mapping[str, Any]) -> str:
        """The entity a keyed record names, as a reader would write it: `customer_id=100001`."""
        return ", ".join(f"{k}={record[k]!r}" for k in self.entity_keys)

    def bad_entity_keys(self, keyed: Sequence[int], problems: Sequence[tuple[int, str]]) -> Rejection:
        """The 400 for entity keys the online store cannot look up; `problems` index the keyed records."""
        fields = [f"records[{keyed[row]}].{why}" for row, why in problems]
        return Rejection(400, f"{len({row for row, _ in problems})} record(s) carry an entity key the online store "
                              "cannot look up", "invalid_entity_key", _capped(fields))

    def unresolved_entities(self, records: Sequence[Any], keyed: Sequence[int], found: Sequence[Mapping[str, Any]],
                            feature_service: str) -> Rejection | None:
        """The 422 for keyed records the online store could not complete, each naming its entity (an unknown one:
        the store holds nothing for it), or None when every keyed record is complete."""
        fields, entities = [], []
        for i, features in zip(keyed, found, strict=True):
            lacking = [name for name in self.schema.names if name not in records[i]]
            if not lacking:
                continue
            entity = self.entity(records[i])
            entities.append(entity)
            fields.append(f"records[{i}]: {entity} is not in the online store" if not features else
                          f"records[{i}]: the online store has no {', '.join(lacking)} for {entity}")
        if not fields:
            return None
        named = "; ".join(entities[:5]) + (f"; and {len(entities) - 5} more" if len(entities) > 5 else "")
        return Rejection(422, f"no online features (feature service {feature_service!r}) for {named}",
                         "unknown_entity", _capped(fields))

    def validate(self, records: Sequence[Any]) -> None:
        """Every problem of every record, each prefixed with its index; raises one 400 naming them all."""
        problems: list[str] = []
        bad_records = 0
        for i, record in enumerate(records):
            found = self.schema.problems(record)
            if found:
                bad_records += 1
                problems.extend(f"records[{i}].{p}" if isinstance(record, Mapping) else f"records[{i}]: {p}"
                                for p in found)
        if not problems:
            return
        raise Rejection(400, f"{bad_records} of {len(records)} record(s) cannot be scored by {self.card.tag}: "
                             f"{len(problems)} bad field(s)",
                        "invalid_record", _capped(problems))

    def encode(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.schema.encode_records(records)

    def unscorable_missing(self, records: Sequence[Mapping[str, Any]], matrix: np.ndarray) -> Rejection:
        """The 422 for a learner that cannot take missing values: each null or unseen category, by record."""
        rows, cols = np.nonzero(np.isnan(matrix))
        fields = [f"records[{i}].{self.schema.features[j].name}: "
                  f"{'null' if records[i].get(self.schema.features[j].name) is None else 'unseen category'}"
                  for i, j in zip(rows.tolist(), cols.tolist(), strict=True)]
        return Rejection(422, f"{self.card.tag} ({self.card.framework}) cannot score missing values or unseen "
                              "categories; send a value for each", "missing_value", _capped(fields))

    def answer(self, predictions: Any) -> dict[str, Any]:
        """The response body: binary and regression give one float per record, multiclass a list of probabilities."""
        values = predictions.tolist() if isinstance(predictions, np.ndarray) else list(predictions)
        return {"model": self.card.name, "version": self.card.version, "predictions": values}


def _capped(fields: list[str]) -> list[str]:
    """Enough to fix a request by: the first MAX_FIELD_MESSAGES, then how many more."""
    shown = fields[:MAX_FIELD_MESSAGES]
    if len(fields) > len(shown):
        shown.append(f"... and {len(fields) - len(shown)} more")
    return shown


def scores(predictions: np.ndarray) -> np.ndarray:
    """One score per record for the score histogram: the value itself, or the top class's probability."""
    return predictions.max(axis=1) if predictions.ndim == 2 else predictions
