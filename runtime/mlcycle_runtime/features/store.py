"""Feast, as the trainer, the server and the materialization job use it: a repository is a directory holding
`feature_store.yaml` (the operator mounts one at /etc/feast), and the definitions may live elsewhere.

Definitions (entities, views, services) are Python files, applied to the registry named by feature_store.yaml.
In a pod /etc/feast is a ConfigMap with the YAML alone, so `apply` takes the definitions from a separate
directory (`definitions`, e.g. baked into the image or mounted from a second ConfigMap); reading features and
materializing need only the YAML, because Feast reads the definitions back from the registry.
"""

from __future__ import annotations

import functools
import numbers
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

CONFIG_FILE = "feature_store.yaml"
# Definitions that read files take their directory from here (see examples/churn/feature_repo/features.py).
DATA_ENV = "MLCYCLE_FEAST_DATA"
_ROW = "__mlcycle_row"


class FeatureStoreError(Exception):
    """A problem with a Feast repository, its definitions or a request, in one line."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def open_store(repo_path: str | Path) -> FeatureStore:
    """The Feast store configured by `<repo_path>/feature_store.yaml`."""
    repo = Path(repo_path)
    if not (repo / CONFIG_FILE).is_file():  # said before seconds of importing Feast
        raise FeatureStoreError(f"{repo} is not a Feast repository: it has no {CONFIG_FILE}")
    import yaml
    from feast import FeatureStore
    from feast.errors import FeastError
    from feast.repo_config import FeastConfigError

    try:
        return FeatureStore(repo_path=str(repo))
    except (FeastError, FeastConfigError, yaml.YAMLError, TypeError, ValueError) as err:
        raise FeatureStoreError(f"{repo / CONFIG_FILE}: {_one_line(err)}") from None


def serving_store(repo_path: str | Path) -> FeatureStore:
    """The store online lookups use, opened once per repository and process (the model server opens it early)."""
    return _serving_store(str(Path(repo_path).resolve()))


@functools.lru_cache(maxsize=8)
def _serving_store(repo: str) -> FeatureStore:
    # The server asks per request: building a store (config, registry, online store client) each time would
    # cost more than the lookup. Feast refreshes its registry cache itself (registry cache_ttl_seconds).
    return open_store(repo)


def _feature_service(store: FeatureStore, name: str) -> Any:
    from feast.errors import FeastObjectNotFoundException

    try:
        return store.get_feature_service(name)
    except FeastObjectNotFoundException:
        known = ", ".join(sorted(s.name for s in store.list_feature_services())) or "none (run apply first?)"
        raise FeatureStoreError(f"no feature service {name!r} in project {store.config.project!r}; "
                                f"known: {known}") from None


def feature_service_refs(repo: str | Path, feature_service: str) -> list[str]:
    """The features a feature service names, as `view:feature` references (what a model's lineage records)."""
    service = _feature_service(open_store(repo), feature_service)
    return [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]


def _refs_by_view(store: FeatureStore, feature_service: str | None, features: Sequence[str]) -> dict[str, list[str]]:
    """The requested features as view:feature references, grouped by feature view."""
    if bool(feature_service) == bool(features):
        raise ValueError("name a feature service or a list of features (view:feature), not both or neither")
    if feature_service:
        service = _feature_service(store, feature_service)
        features = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]
    bad = [f for f in features if ":" not in f]
    if bad:
        raise ValueError(f"features must be written view:feature, got {', '.join(map(repr, bad))}")
    groups: dict[str, list[str]] = {}
    for ref in features:
        groups.setdefault(ref.split(":", 1)[0], []).append(ref)
    return groups


def _timestamp_column(entity_df: pd.DataFrame) -> str:
    """Feast's rule: `event_timestamp` if present, else the one datetime column."""
    import pandas as pd

    stamps = [c for c, t in entity_df.dtypes.items() if pd.api.types.is_datetime64_any_dtype(t)]
    if "event_timestamp" in stamps:
        return "event_timestamp"
    if len(stamps) != 1:
        raise ValueError("entity_df needs one timestamp column (event_timestamp): Feast joins each row as of it; "
                         f"found {stamps or 'none'}")
    return stamps[0]


def historical_features(repo_path: str | Path, entity_df: pd.DataFrame, feature_service: str | None = None,
                        features: Sequence[str] = ()) -> pd.DataFrame:
    """The entity rows, in their order and with their other columns (labels), plus each feature as it was at
    the row's timestamp (Feast's point-in-time join); a feature the store has no value for is null."""
    import pandas as pd
    from feast.errors import FeastError

    if not isinstance(entity_df, pd.DataFrame) or entity_df.empty:
        raise ValueError("entity_df must be a non-empty pandas DataFrame of entity keys and timestamps")
    timestamp = _timestamp_column(entity_df)
    store = open_store(repo_path)
    views = _refs_by_view(store, feature_service, features)
    join_keys = {e.join_key for e in store.list_entities()}
    keys = [c for c in entity_df.columns if c in join_keys]
    if not keys:
        raise ValueError(f"entity_df has no entity join key column (expected one of {sorted(join_keys)})")
    # Feast's file offline store (0.67) drops an entity row outright when one of the views has no value for it
    # within the TTL, and collapses rows that share keys and timestamp (seen here; the tests pin it). So each view is
    # asked separately, each distinct (keys, timestamp) once under a number, and the answers are joined back
    # onto every entity row by that number: a view without a value gives nulls, and no row is lost.
    entity = entity_df.reset_index(drop=True)
    lookup = entity.groupby([*keys, timestamp], sort=False, dropna=False).ngroup()
    distinct = entity[[*keys, timestamp]].assign(**{_ROW: lookup}).drop_duplicates(_ROW)
    result = entity.assign(**{_ROW: lookup})
    for refs in views.values():
        try:
            joined = store.get_historical_features(entity_df=distinct, features=refs).to_df()
        except FeastError as err:
            raise FeatureStoreError(_one_line(err)) from None
        values = joined.drop(columns=[*keys, timestamp])
        # What the store says replaces a same-named column of entity_df: that is what asking the store means.
        result = result.drop(columns=[c for c in values.columns if c != _ROW and c in result.columns])
        result = result.merge(values, on=_ROW, how="left")
    return result.drop(columns=_ROW)


def online_features(repo_path: str | Path, feature_service: str,
                    entity_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latest materialized features for each entity row (None where the store has no value), one dict per
    row with its entity keys."""
    if not entity_rows:
        return []
    columns, _ = _online(repo_path, feature_service, entity_rows)
    return [{name: values[i] for name, values in columns.items()} for i in range(len(entity_rows))]


def online_values(repo_path: str | Path, feature_service: str,
                  entity_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per entity row, the features the online store holds for it (a stored null stays None) without the entity
    keys; a feature it holds nothing for is left out, so an entity it does not know gets an empty dict."""
    if not entity_rows:
        return []
    columns, held = _online(repo_path, feature_service, entity_rows)
    return [{name: values[i] for name, values in columns.items() if held[name][i] and name not in row}
            for i, row in enumerate(entity_rows)]


class EntityKeyError(FeatureStoreError, ValueError):
    """Entity rows whose keys cannot be looked up (a wrong type, out of range): the caller's fault, not the store's.
    `problems` holds (row index, "key: why") pairs."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"entity_rows[{i}].{why}" for i, why in problems))


_INT_BOUNDS = {"INT32": 2**31, "INT64": 2**63}


def _key_problem(key: str, value: Any, value_type: str) -> str | None:
    # Feast coerces keys with int() (so "7", 7.9 and true are looked up as 7 and 1) and answers a null with a
    # TypeError: each must be refused here, naming the key, or it scores the wrong customer or becomes a 5xx.
    kind = "null" if value is None else type(value).__name__
    if value_type in _INT_BOUNDS:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return f"{key}: expected an integer, got {kind}"
        bound = _INT_BOUNDS[value_type]
        if not -bound <= int(value) < bound:
            return f"{key}: {value} is out of range for {value_type}"
    elif value_type == "STRING" and not isinstance(value, str):
        return f"{key}: expected a string, got {kind}"
    return None


def _online(repo_path: str | Path, feature_service: str,
            entity_rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[Any]], dict[str, list[bool]]]:
    """Feast's answer for the entity rows: per feature (and entity key) the values by row, and whether the store
    holds a row for that entity in the feature's view."""
    from feast.errors import FeastError
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    store = serving_store(repo_path)
    service = _feature_service(store, feature_service)
    types = {e.join_key: e.value_type.name for e in store.list_entities()}
    problems = [(i, why) for i, row in enumerate(entity_rows) for key, value in row.items()
                if key in types and (why := _key_problem(key, value, types[key]))]
    if problems:
        raise EntityKeyError(problems)
    try:
        response = store.get_online_features(features=service, entity_rows=[dict(r) for r in entity_rows])
    except FeastError as err:
        raise FeatureStoreError(_one_line(err)) from None
    except Exception as err:  # the store's client: connection refused, timeouts, a missing table
        raise FeatureStoreError(f"{_online_store_name(store)} could not be read: {_one_line(err)}") from None
    columns = response.to_dict()
    names = response.proto.metadata.feature_names.val
    present = (FieldStatus.PRESENT, FieldStatus.NULL_VALUE)
    # The status alone does not tell: Feast 0.67's Redis store answers an unknown entity with PRESENT empty values
    # (SQLite: NOT_FOUND). Both leave its event timestamp unset (0), and a materialized row never has one at 0.
    held = {name: [status in present and (stamp.seconds or stamp.nanos) > 0
                   for status, stamp in zip(result.statuses, result.event_timestamps, strict=True)]
            for name, result in zip(names, response.proto.results, strict=True)}
    return columns, held


def _online_store_name(store: FeatureStore) -> str:
    """The online store in words, for errors: its type and where it is (never a password from the config)."""
    online = store.config.online_store
    kind = getattr(online, "type", None) or type(online).__name__
    # A Redis connection string is "host:port,password=...,ssl=true": the address is its first part.
    where = str(getattr(online, "connection_string", "") or "").split(",")[0] or getattr(online, "path", "")
    return f"the {kind} online store" + (f" at {where}" if where else "")


@contextmanager
def _importable(directory: Path, data: str | Path | None) -> Iterator[None]:
    """Feast imports definition files as modules named by their path relative to the working directory; the
    definitions read their data directory from DATA_ENV while they are imported."""
    cwd, bytecode, saved = os.getcwd(), sys.dont_write_bytecode, os.environ.get(DATA_ENV)
    if data is not None:
        os.environ[DATA_ENV] = str(Path(data).resolve())
    os.chdir(directory)
    sys.path.insert(0, str(directory))
    # The definitions directory may be read-only (an image layer, a ConfigMap).
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(directory))
        sys.dont_write_bytecode = bytecode
        if saved is None:
            os.environ.pop(DATA_ENV, None)
        else:
            os.environ[DATA_ENV] = saved


def apply(repo_path: str | Path, definitions: str | Path | None = None, data: str | Path | None = None) -> None:
    """`feast apply`: register the definitions (every *.py under `definitions`, default the repo itself) in the
    repo's registry and create their online tables, deleting what the definitions no longer hold."""
    from feast import Project
    from feast.repo_operations import apply_total_with_repo_instance, get_repo_files, parse_repo, py_path_to_module

    store = open_store(repo_path)
    directory = Path(definitions or repo_path).resolve()
    if not directory.is_dir():
        raise FeatureStoreError(f"definitions directory {directory} does not exist")
    if (directory / "..data").is_dir():
        # A ConfigMap (or Secret) volume: each file is a link into the kubelet's ..data/..<timestamp> directories,
        # which Feast's scan would import a second time under a module name starting with dots.
        with tempfile.TemporaryDirectory(prefix="feast-definitions-") as plain:
            for entry in directory.iterdir():
                if not entry.name.startswith("..") and entry.is_file():
                    shutil.copyfile(entry, Path(plain) / entry.name)
            return apply(repo_path, definitions=plain, data=data)
    files = get_repo_files(directory)
    if not files:
        raise FeatureStoreError(f"no Feast definitions (*.py) in {directory}")
    with _importable(directory, data):
        # A module imported before (another repo's features.py) would shadow this one's.
        for path in files:
            sys.modules.pop(py_path_to_module(path), None)
        try:
            contents = parse_repo(directory)
        except Exception as err:
            raise FeatureStoreError(f"definitions in {directory} do not load: {_one_line(err)}") from err
    project = store.config.project
    names = [p.name for p in contents.projects]
    if not names:
        contents.projects.append(Project(name=project))
    elif names != [project]:
        raise FeatureStoreError(f"definitions declare project {names}, feature_store.yaml says {project!r}")
    print(f"applying {len(files)} definition file(s) from {directory} to project {project!r} "
          f"(registry {store.config.registry.path})", flush=True)
    apply_total_with_repo_instance(store, project, store.registry, contents, skip_source_validation=False)


def _utc(value: datetime | str | None) -> datetime:
    import pandas as pd

    ts = pd.Timestamp(value if value is not None else pd.Timestamp.now(tz="UTC"))
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def materialize(repo_path: str | Path, end: datetime | str | None = None,
                start: datetime | str | None = None) -> list[tuple[str, datetime | None]]:
    """Load feature values into the online store up to `end` (default now): from each view's last run (or one
    TTL before now, the first time: Feast's rule) like `feast materialize-incremental`, or from `start` when given (a
    backfill, like `feast materialize`). Returns each view and its new high mark."""
    from feast.errors import FeastError

    store = open_store(repo_path)
    views = store.list_feature_views()
    if not views:
        raise FeatureStoreError(f"the registry of project {store.config.project!r} ({store.config.registry.path}) "
                                "has no feature views: run `python -m mlcycle_runtime.features apply` first")
    end_time = _utc(end)
    begin = _utc(start) if start is not None else None
    if begin is not None and begin >= end_time:
        raise ValueError(f"start {begin.isoformat()} is not before end {end_time.isoformat()}")
    print(f"materializing {len(views)} feature view(s) of project {store.config.project!r} "
          f"{'from ' + begin.isoformat() + ' ' if begin else ''}up to {end_time.isoformat()}", flush=True)
    try:
        if begin is None:
            store.materialize_incremental(end_date=end_time)
        else:
            store.materialize(start_date=begin, end_date=end_time)
    except FeastError as err:
        raise FeatureStoreError(_one_line(err)) from None
    except Exception as err:
        # The online store is another service (Redis): unreachable, it raised its client's own error, which
        # surfaced as a traceback that never named the store.
        online = store.config.online_store
        where = getattr(online, "connection_string", None) or getattr(online, "path", None) or online.type
        if type(err).__module__.split(".")[0] not in ("redis", "sqlite3"):
            raise
        raise FeatureStoreError(f"the online store ({online.type} at {where}) cannot be written: "
                                f"{_one_line(err)}") from None
    store.refresh_registry()
    return [(v.name, v.most_recent_end_time) for v in store.list_feature_views()]
