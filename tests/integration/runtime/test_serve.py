"""The model server as it runs in a pod: `python -m mlcycle_runtime.serve` (`bentoml serve`) on a loopback port.

Versions are made the way the trainer makes them (`save_version` of an XGBoost Booster and a scikit-learn model
fitted on the example's churn data); the server is called with `bentoml.SyncHTTPClient` and with raw httpx.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from examples.churn.generate import CATEGORICAL, NUMERIC, generate
from mlcycle_runtime import reference
from mlcycle_runtime.bodylimit import DEFAULT_MAX_REQUEST_BYTES
from mlcycle_runtime.model import LoadedModel, ModelCard, Predictor, load_version, save_version
from mlcycle_runtime.schema import FeatureSchema
from tests.harness import server_process

FEATURES = [*NUMERIC, *CATEGORICAL]
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_version(root: Path, framework: str, version: str | None = None) -> str:
    """Train a tiny model on churn data and publish it as a version, as the trainer does. Versions are unique in
    one process, as the trainer's are: BentoML keeps the first store it opened, whatever BENTOML_HOME says later."""
    frame = generate(rows=1500, seed=11)
    schema = FeatureSchema.infer(frame, FEATURES)
    matrix, label = schema.encode_frame(frame), frame["churned"].to_numpy()
    if framework == "xgboost":
        import xgboost as xgb

        learner = xgb.train({"max_depth": 3, "objective": "binary:logistic"}, xgb.DMatrix(matrix, label=label), 15)
    else:
        from sklearn.ensemble import HistGradientBoostingClassifier

        learner = HistGradientBoostingClassifier(max_iter=20).fit(matrix, label)
    version = version or f"{framework}-v1"
    card = ModelCard("churn-classifier", version, framework, "binary", schema, "churned")
    ref = reference.build(frame, schema, Predictor(learner, framework, "binary").predict(matrix))
    return save_version(learner, card, ref, str(root / "store" / "churn" / "models" / "churn-classifier" / version))


class Server:
    def __init__(self, process: subprocess.Popen, url: str, model: LoadedModel, log: Path, batched: bool) -> None:
        self.process, self.url, self.model, self.log, self.batched = process, url, model, log, batched


def start(tmp: Path, uri: str, env: dict[str, str], batching: dict) -> Server:
    port = free_port()
    conf = tmp / f"serve-{port}.json"
    conf.write_text(json.dumps({"kind": "ModelDeployment", "name": "churn", "namespace": "t",
                                "model": {"name": "churn-classifier", "uri": uri}, "port": port,
                                "batching": batching}))
    log = tmp / f"serve-{port}.log"
    url = f"http://127.0.0.1:{port}"
    try:
        process = server_process.start_http([sys.executable, "-m", "mlcycle_runtime.serve", "--config", str(conf),
                                        "--host", "127.0.0.1"], env, url, log, timeout=START_TIMEOUT)
    except server_process.NotReady as err:
        pytest.fail(f"the model server: {err}")
    return Server(process, url, load_version(uri), log, bool(batching.get("enabled")))


stop = server_process.stop_group


@pytest.fixture(scope="module", params=["xgboost", "sklearn"])
def server(request, serve_home) -> Iterator[Server]:
    tmp, env = serve_home
    uri = make_version(tmp, request.param)
    # xgboost through adaptive batching, sklearn without: both paths of /predict run for real.
    batching = {"enabled": request.param == "xgboost", "maxBatchSize": 16, "maxLatencyMs": 5}
    srv = start(tmp, uri, env, batching)
    try:
        yield srv
    finally:
        stop(srv.process)


def rows(n: int, seed: int = 5) -> list[dict]:
    frame = generate(rows=n, seed=seed)[FEATURES]
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
            for r in frame.astype(object).to_dict(orient="records")]


def expected(srv: Server, records: list[dict]) -> np.ndarray:
    return srv.model.predictor.predict(srv.model.card.features.encode_records(records))


def test_predictions_through_the_bentoml_client_equal_the_predictors(server):
    import bentoml

    records = rows(5)
    with bentoml.SyncHTTPClient(server.url) as client:
        answer = client.predict(records=records)
    assert answer["model"] == "churn-classifier" and answer["version"] == server.model.card.version
    np.testing.assert_allclose(answer["predictions"], expected(server, records), rtol=1e-6)


def test_one_row_and_a_batch_through_raw_http(server):
    one = rows(1, seed=1)
    resp = httpx.post(f"{server.url}/predict", json={"records": one}, timeout=10)
    assert resp.status_code == 200
    np.testing.assert_allclose(resp.json()["predictions"], expected(server, one), rtol=1e-6)
    many = rows(500, seed=2)
    resp = httpx.post(f"{server.url}/predict", json={"records": many}, timeout=30)
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 500
    np.testing.assert_allclose(resp.json()["predictions"], expected(server, many), rtol=1e-6)


def test_concurrent_single_row_requests_each_get_their_own_answer(server):
    import concurrent.futures

    records = rows(24, seed=3)
    want = expected(server, records)
    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: client.post(f"{server.url}/predict", json={"records": [r]}), records))
    assert [a.status_code for a in answers] == [200] * len(records)
    np.testing.assert_allclose([a.json()["predictions"][0] for a in answers], want, rtol=1e-6)


def metric(text: str, name: str) -> float:
    """The sum of a series' samples across label sets (0 when absent)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_concurrent_requests_over_http_are_scored_in_batches_only_where_batching_is_on(server):
    import asyncio

    before = httpx.get(f"{server.url}/metrics").text
    records = rows(64, seed=4)

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(f"{server.url}/predict", json={"records": [r]})
                                          for r in records))

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * len(records)
    # Batched answers are the predictor's own, row for row (float32 trees: identical, not merely close).
    assert [a.json()["predictions"][0] for a in answers] == expected(server, records).tolist()
    after = httpx.get(f"{server.url}/metrics").text
    scored = metric(after, "mlcycle_server_batch_size_sum") - metric(before, "mlcycle_server_batch_size_sum")
    batches = metric(after, "mlcycle_server_batch_size_count") - metric(before, "mlcycle_server_batch_size_count")
    if not server.batched:  # the sklearn server: every request scored on its own, nothing queued
        assert (scored, batches) == (0, 0)
        return
    assert scored == len(records), f"{scored} rows went through the batcher, {len(records)} were sent"
    assert batches < scored, f"{batches} batches for {scored} rows: no batch held more than one request"


GOOD = {"tenure_months": 3, "monthly_charges": 80.5, "support_calls": 2, "data_usage_gb": 4.0,
        "contract": "month-to-month", "plan": "basic", "region": "north"}


@pytest.mark.parametrize(("body", "status", "field"), [
    (b'{"records": [', 400, None),
    (b"[1, 2]", 400, "(body): expected an object, got list"),
    (b'{"rows": []}', 400, "records: missing"),
    (b'{"records": {}}', 400, "records: expected a list, got dict"),
    (b'{"records": []}', 400, "records: empty"),
    (json.dumps({"records": [GOOD, {k: v for k, v in GOOD.items() if k != "plan"}]}).encode(), 400,
     "records[1].plan: missing"),
    (json.dumps({"records": [{**GOOD, "monthly_charges": "80"}]}).encode(), 400,
     "records[0].monthly_charges: expected a number, got str"),
    (b'{"records": [{"tenure_months": NaN, "monthly_charges": 1, "support_calls": 1, "data_usage_gb": 1, '
     b'"contract": "one-year", "plan": "basic", "region": "north"}]}', 400, "records[0].tenure_months: must be finite"),
    (b'{"records": ["row"]}', 400, "records[0]: a record must be a JSON object, got str"),
    (json.dumps({"records": [GOOD], "version": "v0"}).encode(), 404, "version: 'v0' is not"),
])
def test_every_bad_request_gets_a_4xx_naming_the_problem(server, body, status, field):
    resp = httpx.post(f"{server.url}/predict", content=body, headers={"content-type": "application/json"},
                      timeout=10)
    assert resp.status_code == status, resp.text
    answer = resp.json()
    assert set(answer) == {"error", "fields"} and answer["error"]
    if field is not None:
        assert any(f.startswith(field) for f in answer["fields"]), answer


def test_a_body_over_the_limit_is_a_413_declared_or_streamed_and_counted(server):
    """The default limit (1 MiB): a larger body, with a Content-Length or chunked, is refused before BentoML reads
    it in full; the server goes on answering."""
    record = json.dumps(GOOD).encode()
    body = b'{"records": [' + b", ".join([record] * (DEFAULT_MAX_REQUEST_BYTES // len(record) + 1)) + b"]}"
    json_type = {"content-type": "application/json"}
    declared = httpx.post(f"{server.url}/predict", content=body, headers=json_type, timeout=30)
    assert declared.status_code == 413, declared.text
    assert declared.json() == {"error": f"request body too large: Content-Length is {len(body):,} bytes; this "
                                        f"deployment accepts at most {DEFAULT_MAX_REQUEST_BYTES:,} bytes "
                                        "(spec.serving.maxRequestSize)", "fields": []}
    streamed = httpx.post(f"{server.url}/predict", headers=json_type, timeout=30,
                          content=(body[i:i + 65536] for i in range(0, len(body), 65536)))
    assert streamed.status_code == 413 and "more than" in streamed.json()["error"], streamed.text
    assert httpx.post(f"{server.url}/predict", json={"records": [GOOD]}).status_code == 200
    version = server.model.card.version
    errors = f'mlcycle_server_request_errors_total{{reason="too_large",version="{version}"}}'
    counted = [line for line in httpx.get(f"{server.url}/metrics").text.splitlines() if line.startswith(errors)]
    assert counted and float(counted[0].split()[-1]) == 2, counted


def test_a_request_for_another_version_by_header_is_a_404_naming_both(server):
    resp = httpx.post(f"{server.url}/predict", json={"records": [GOOD]}, headers={"x-mlcycle-version": "v0"})
    assert resp.status_code == 404
    assert "'v0'" in resp.json()["error"] and repr(server.model.card.version) in resp.json()["error"]
    same = httpx.post(f"{server.url}/predict", json={"records": [GOOD]},
                      headers={"x-mlcycle-version": server.model.card.version})
    assert same.status_code == 200


def test_probes_and_metrics(server):
    assert httpx.get(f"{server.url}/livez").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    httpx.post(f"{server.url}/predict", json={"records": [GOOD, GOOD]})
    httpx.post(f"{server.url}/predict", content=b"{")
    text = httpx.get(f"{server.url}/metrics").text
    version = server.model.card.version
    for line in (f'mlcycle_server_predictions_total{{version="{version}"}}',
                 f'mlcycle_server_prediction_duration_seconds_bucket{{le="0.005",version="{version}"}}',
                 f'mlcycle_server_prediction_score_count{{version="{version}"}}',
                 f'mlcycle_server_request_errors_total{{reason="invalid_json",version="{version}"}}'):
        assert line in text, f"{line} not in /metrics"
    assert "bentoml_service_request_duration_seconds" in text  # BentoML's own series are still there


@pytest.mark.parametrize(("config", "reason"), [
    ("{not json", "is not JSON"),
    (json.dumps({"name": "churn", "model": {}}), "model.uri: the model server needs the URI"),
    (json.dumps({"name": "churn", "model": {"uri": "/nowhere/churn/v1"}}), "is not a complete model version"),
    (json.dumps({"name": "churn", "model": {"uri": "/x"}, "port": "http"}), "port:"),
])
def test_a_wrong_config_exits_non_zero_with_a_one_line_reason(serve_home, config, reason):
    tmp, env = serve_home
    path = tmp / "bad.json"
    path.write_text(config)
    done = subprocess.run([sys.executable, "-m", "mlcycle_runtime.serve", "--config", str(path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlcycle: invalid config:") and reason in lines[0], done.stderr
