"""The model server completing entity-keyed records from a real Feast online store (SQLite, and a real redis-server).

The example's definitions are applied and materialized up to a fixed time; `bentoml serve` runs with
`onlineFeatures` configured; a record that carries only `customer_id` must score exactly as the customer's full
row read from the offline data at that time, scored in-process by the same model version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from examples.churn.generate import write
from mlcycle_runtime.features import apply, materialize
from mlcycle_runtime.model import LoadedModel, load_version
from tests.harness import server_process
from tests.harness.pytest_support import unavailable
from tests.integration.runtime.test_serve import FEATURES, START_TIMEOUT, free_port, make_version, stop

ROOT = Path(__file__).resolve().parents[3]
DEFINITIONS = ROOT / "examples" / "churn" / "feature_repo"
SERVICE = "churn_features"
UNKNOWN = 12_345
LATE_CHARGES, LATE_CALLS = 119.99, 9


@dataclass
class Data:
    directory: Path
    at: pd.Timestamp  # the materialization's end: the online store holds each customer's row as of then
    rows: pd.DataFrame  # each customer's full row as of `at`, from the offline data, indexed by customer_id
    null_charges: int  # a customer whose latest monthly_charges is null
    late: int  # a customer with a usage row written after `at`, which the online store must not hold


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    directory = tmp_path_factory.mktemp("churn-data")
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=60)).strftime("%Y-%m-%d")
    paths = write(directory, rows=2_000, start=start, days=50)
    customers = pd.read_parquet(paths["customers"])
    at = customers.event_timestamp.max() + pd.Timedelta(hours=1)
    latest = customers.sort_values("event_timestamp").groupby("customer_id").tail(1)
    null_charges, late = (int(c) for c in latest.customer_id.iloc[:2])
    # A null feature in the store must reach the model as a missing value, as it did in training.
    customers.loc[latest.index[0], "monthly_charges"] = np.nan
    usage = customers[["customer_id", "event_timestamp", "monthly_charges", "support_calls", "data_usage_gb"]]
    after = pd.DataFrame({"customer_id": [late], "event_timestamp": [at + pd.Timedelta(hours=1)],
                          "monthly_charges": [LATE_CHARGES], "support_calls": [LATE_CALLS], "data_usage_gb": [1.0]})
    pd.concat([usage, after], ignore_index=True).to_parquet(paths["customer_usage"], index=False)
    rows = customers.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    return Data(directory, at, rows[FEATURES], null_charges, late)


@dataclass
class FeastRepo:
    path: Path
    kind: str
    redis: object | None = None


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def feast_repo(request, data, tmp_path_factory) -> Iterator[FeastRepo]:
    """The example's definitions applied and materialized up to `data.at`, into SQLite or a real redis-server."""
    base = tmp_path_factory.mktemp(f"feast-{request.param}")
    redis = None
    if request.param == "redis":
        from tests.harness.redis import Redis

        if shutil.which("redis-server") is None:
            unavailable("redis-server", "the 'redis-server' binary is not installed (make system-deps)")
        redis = Redis(base / "redis")
        redis.start()
        online = {"type": "redis", "connection_string": redis.address}
    else:
        online = {"type": "sqlite", "path": str(base / "online.db")}
    repo = base / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "churn", "registry": str(base / "registry.db"), "provider": "local",
        "offline_store": {"type": "file"}, "online_store": online, "entity_key_serialization_version": 3}))
    try:
        apply(repo, definitions=DEFINITIONS, data=data.directory)
        marks = dict(materialize(repo, end=data.at))
        assert marks == {"customer_profile": data.at.to_pydatetime(), "customer_usage": data.at.to_pydatetime()}
        yield FeastRepo(repo, request.param, redis)
    finally:
        if redis is not None:
            redis.stop()


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    model: LoadedModel
    store: FeastRepo

    def predict(self, records: list) -> httpx.Response:
        return httpx.post(f"{self.url}/predict", json={"records": records}, timeout=60)


@pytest.fixture(scope="module")
def version_uri(serve_home) -> str:
    tmp, _ = serve_home
    return make_version(tmp, "xgboost", "xgboost-online-v1")


@pytest.fixture(scope="module")
def server(serve_home, version_uri, feast_repo) -> Iterator[Server]:
    tmp, env = serve_home
    port = free_port()
    conf = tmp / f"serve-{port}.json"
    conf.write_text(json.dumps({
        "kind": "ModelDeployment", "name": "churn", "namespace": "t", "port": port,
        "model": {"name": "churn-classifier", "uri": version_uri},
        "batching": {"enabled": True, "maxBatchSize": 16, "maxLatencyMs": 5},
        "onlineFeatures": {"featureService": SERVICE, "entityKeys": ["customer_id"]},
        "featureStore": {"repoPath": str(feast_repo.path)}}))
    url = f"http://127.0.0.1:{port}"
    try:
        process = server_process.start_http([sys.executable, "-m", "mlcycle_runtime.serve", "--config", str(conf),
                                        "--host", "127.0.0.1"], env, url, tmp / f"serve-{port}.log",
                                       timeout=START_TIMEOUT)
    except server_process.NotReady as err:
        pytest.fail(f"the model server: {err}")
    try:
        yield Server(process, url, load_version(version_uri), feast_repo)
    finally:
        stop(process)


def full_rows(data: Data, customers: list[int]) -> list[dict]:
    """Each customer's full feature row as of the materialization, as a JSON record (null for a missing value)."""
    frame = data.rows.loc[customers]
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")]


def expected(srv: Server, records: list[dict]) -> np.ndarray:
    return srv.model.predictor.predict(srv.model.card.features.encode_records(records))


def test_records_with_only_the_entity_key_score_as_their_full_offline_rows(server, data):
    customers = [data.null_charges, data.late, *map(int, data.rows.index[5:25])]
    resp = server.predict([{"customer_id": c} for c in customers])
    assert resp.status_code == 200, resp.text
    want = expected(server, full_rows(data, customers))
    np.testing.assert_allclose(resp.json()["predictions"], want, rtol=1e-6)
    # The checks above can tell: the null and the value written after the materialization change the score.
    null_filled, late = full_rows(data, [data.null_charges, data.late])
    assert expected(server, [{**null_filled, "monthly_charges": 65.0}])[0] != pytest.approx(want[0], rel=1e-6)
    later = {**late, "monthly_charges": LATE_CHARGES, "support_calls": LATE_CALLS}
    assert expected(server, [later])[0] != pytest.approx(want[1], rel=1e-6)


def test_a_mixed_batch_of_full_keyed_and_overriding_records(server, data):
    a, b, c = (int(i) for i in data.rows.index[30:33])
    full_a = full_rows(data, [a])[0]
    overridden = {**full_rows(data, [c])[0], "plan": "premium", "support_calls": 7}
    records = [{**full_a, "tenure_months": 1}, {"customer_id": b}, {"customer_id": c, "plan": "premium",
                                                                    "support_calls": 7}]
    resp = server.predict(records)
    assert resp.status_code == 200, resp.text
    want = expected(server, [{**full_a, "tenure_months": 1}, full_rows(data, [b])[0], overridden])
    np.testing.assert_allclose(resp.json()["predictions"], want, rtol=1e-6)


def test_an_unknown_customer_is_a_422_naming_it(server, data):
    known = int(data.rows.index[40])
    resp = server.predict([{"customer_id": known}, {"customer_id": UNKNOWN}])
    assert resp.status_code == 422, resp.text
    answer = resp.json()
    assert answer["error"] == f"no online features (feature service '{SERVICE}') for customer_id={UNKNOWN}"
    assert answer["fields"] == [f"records[1]: customer_id={UNKNOWN} is not in the online store"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'mlcycle_server_request_errors_total{{reason="unknown_entity",version="{server.model.card.version}"}}' \
        in metrics


@pytest.mark.parametrize(("key", "field"), [
    ("100001", "records[1].customer_id: expected an integer, got str"),
    (None, "records[1].customer_id: expected an integer, got null"),
    (100001.5, "records[1].customer_id: expected an integer, got float"),
    (True, "records[1].customer_id: expected an integer, got bool"),
    (2**70, f"records[1].customer_id: {2**70} is out of range for INT64"),
])
def test_an_entity_key_of_the_wrong_type_is_a_400_naming_it(server, data, key, field):
    # Feast would look up "100001" and 100001.5 as customer 100001 and answer a null with a TypeError.
    resp = server.predict([*full_rows(data, [int(data.rows.index[3])]), {"customer_id": key}])
    assert resp.status_code == 400, resp.text
    assert resp.json()["fields"] == [field]


@pytest.mark.parametrize("feast_repo", ["redis"], indirect=True)
def test_an_unreachable_online_store_is_a_503_naming_it(server, data):
    """Last in the module: it stops the redis-server that this flavour of the server reads."""
    known = int(data.rows.index[0])
    assert server.predict([{"customer_id": known}]).status_code == 200
    server.store.redis.stop()
    resp = server.predict([{"customer_id": known}])
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error.startswith(f"online features unavailable: the redis online store at {server.store.redis.address} "
                            "could not be read: "), error
    # Records that need no lookup are still scored while the store is down.
    full = full_rows(data, [known])
    resp = server.predict(full)
    assert resp.status_code == 200
    np.testing.assert_allclose(resp.json()["predictions"], expected(server, full), rtol=1e-6)
