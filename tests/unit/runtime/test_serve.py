"""The model server's logic without a server: request parsing and validation, encoding, the answer's shape.

The service class is constructed with the loader replaced by a real tiny model (an XGBoost Booster or a
scikit-learn estimator fitted here); requests go through `ModelServer.handle`, what the HTTP API calls.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from prometheus_client import CollectorRegistry
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from mlcycle_runtime import config as cfg
from mlcycle_runtime import metrics as names
from mlcycle_runtime import reference
from mlcycle_runtime.model import LoadedModel, ModelCard, Predictor
from mlcycle_runtime.schema import FeatureSchema
from mlcycle_runtime.serve import handler as h
from mlcycle_runtime.serve.service import ModelServer, score_buckets, scoring_device

RNG = np.random.default_rng(3)
FRAME = pd.DataFrame({"monthly_charges": RNG.uniform(20, 120, 300), "tenure_months": RNG.integers(0, 72, 300),
                      "plan": RNG.choice(["basic", "premium", "standard"], 300)})
LABEL = ((FRAME.monthly_charges > 70) & (FRAME.tenure_months < 30)).astype(int)
SCHEMA = FeatureSchema.infer(FRAME, FRAME.columns)
GOOD = {"monthly_charges": 80.5, "tenure_months": 3, "plan": "basic"}


def loaded(framework: str = "xgboost", task: str = "binary", version: str = "v1", learner=None) -> LoadedModel:
    matrix = SCHEMA.encode_frame(FRAME)
    if learner is not None:
        learner = learner.fit(matrix, LABEL)
    elif framework == "xgboost":
        learner = xgb.train({"max_depth": 2, "objective": "binary:logistic"}, xgb.DMatrix(matrix, label=LABEL), 5)
    elif task == "regression":
        learner = DecisionTreeRegressor(max_depth=3).fit(matrix, FRAME.monthly_charges)
    elif task == "binary":
        learner = HistGradientBoostingClassifier(max_iter=10).fit(matrix, LABEL)
    else:
        learner = DecisionTreeClassifier(max_depth=3).fit(matrix, FRAME.plan)
    predictor = Predictor(learner, framework, task)
    scores = predictor.predict(matrix)
    ref = reference.build(FRAME, SCHEMA, scores if scores.ndim == 1 else None)
    card = ModelCard("churn", version, framework, task, SCHEMA, "churned")
    return LoadedModel(card, ref, predictor)


def server(model: LoadedModel | None = None, **config) -> ModelServer:
    model = model or loaded()
    conf = cfg.ServeConfig.model_validate({"name": "churn", "model": {"uri": "file:///models/churn/v1"}, **config})
    return ModelServer.inner(config=conf, loader=lambda uri: model, registry=CollectorRegistry())


def call(srv: ModelServer, payload, header: str | None = None) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return asyncio.run(srv.handle(body, header))


# --- the handler: pure functions ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"records": [', "not valid JSON"),
    (b"\xc3(", "not UTF-8 JSON"),
    (b"", "not valid JSON"),
    # Valid JSON that Python's parser cannot follow (it raised RecursionError, a 500): a 400 now.
    (b"[" * 100_000 + b"]" * 100_000, "nests arrays or objects too deeply"),
    (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "nests arrays or objects too deeply"),
    (b'{"records": [{"tenure_months": ' + b"9" * 5000 + b"}]}", "an integer of more than 4300 digits"),
])
def test_a_body_that_is_not_json_is_a_400_saying_so(body, expected):
    with pytest.raises(h.Rejection) as err:
        h.decode_body(body)
    assert err.value.status == 400 and expected in err.value.error and err.value.reason == "invalid_json"


@pytest.mark.parametrize(("payload", "field"), [
    ([GOOD], "(body): expected an object, got list"),
    ("records", "(body): expected an object, got str"),
    ({"rows": [GOOD]}, "records: missing"),
    ({"records": GOOD}, "records: expected a list, got dict"),
    ({"records": None}, "records: expected a list, got null"),
    ({"records": []}, "records: empty"),
])
def test_a_request_of_the_wrong_shape_is_a_400_naming_it(payload, field):
    with pytest.raises(h.Rejection) as err:
        h.RequestHandler(loaded().card).records(payload)
    assert err.value.status == 400 and err.value.fields == [field]


def test_too_many_records_in_one_request_are_refused():
    with pytest.raises(h.Rejection) as err:
        h.RequestHandler(loaded().card).records({"records": [GOOD] * (h.MAX_RECORDS + 1)})
    assert err.value.reason == "too_many"


@pytest.mark.parametrize(("payload", "header"), [({"records": [GOOD], "version": "v2"}, None),
                                                 ({"records": [GOOD]}, "v2")])
def test_another_version_is_a_404_naming_both(payload, header):
    with pytest.raises(h.Rejection) as err:
        h.RequestHandler(loaded().card).records(payload, header)
    assert err.value.status == 404 and "'v2'" in err.value.error and "'v1'" in err.value.error


def test_the_served_version_may_be_named():
    records = h.RequestHandler(loaded().card).records({"records": [GOOD], "version": "v1"}, "v1")
    assert records == [GOOD]


def test_validation_names_every_bad_field_with_its_record_index():
    bad = [GOOD, {"monthly_charges": "80", "tenure_months": float("inf")},
           {**GOOD, "plan": ["basic"]}, 7]
    with pytest.raises(h.Rejection) as err:
        h.RequestHandler(loaded().card).validate(bad)
    assert err.value.status == 400
    assert err.value.fields == ["records[1].monthly_charges: expected a number, got str",
                                "records[1].tenure_months: must be finite",
                                "records[1].plan: missing",
                                "records[2].plan: expected a category (string), got list",
                                "records[3]: a record must be a JSON object, got int"]
    assert "3 of 4 record(s)" in err.value.error


def test_a_flood_of_bad_fields_is_capped():
    with pytest.raises(h.Rejection) as err:
        h.RequestHandler(loaded().card).validate([{}] * 500)
    assert len(err.value.fields) == h.MAX_FIELD_MESSAGES + 1
    assert err.value.fields[-1] == f"... and {1500 - h.MAX_FIELD_MESSAGES} more"


def test_entity_keyed_records_are_recognised():
    handler = h.RequestHandler(loaded().card, entity_keys=["customer_id"])
    assert handler.needs_lookup({"customer_id": 7})
    assert not handler.needs_lookup({"customer_id": 7, **GOOD})
    assert not handler.needs_lookup(GOOD)
    assert not h.RequestHandler(loaded().card).needs_lookup({"customer_id": 7})


# --- the service class, with the loader replaced by a real tiny model -------------------------------------------


@pytest.mark.parametrize(("framework", "task"), [("xgboost", "binary"), ("sklearn", "binary"),
                                                 ("sklearn", "regression"), ("sklearn", "multiclass")])
def test_predictions_are_the_predictors_in_the_documented_shape(framework, task):
    model = loaded(framework, task)
    records = [GOOD, {"monthly_charges": 30.0, "tenure_months": 60, "plan": "premium"},
               {"monthly_charges": None, "tenure_months": 10, "plan": "unseen-plan"}]
    status, answer = call(server(model), {"records": records})
    assert status == 200
    assert answer["model"] == "churn" and answer["version"] == "v1"
    expected = model.predictor.predict(SCHEMA.encode_records(records))
    np.testing.assert_allclose(np.asarray(answer["predictions"]), expected, rtol=1e-6)
    if task == "multiclass":
        assert all(len(p) == 3 and abs(sum(p) - 1) < 1e-6 for p in answer["predictions"])
    else:
        assert all(isinstance(p, float) for p in answer["predictions"])


def test_a_learner_that_refuses_missing_values_gets_a_422_naming_them_not_a_5xx():
    srv = server(loaded("sklearn", learner=LogisticRegression(max_iter=500)))
    status, answer = call(srv, {"records": [GOOD, {**GOOD, "monthly_charges": None},
                                            {**GOOD, "plan": "platinum"}]})
    assert status == 422
    assert answer["fields"] == ["records[1].monthly_charges: null", "records[2].plan: unseen category"]
    assert call(srv, {"records": [GOOD]})[0] == 200


def test_records_are_encoded_in_schema_order_whatever_their_key_order():
    srv = server()
    shuffled = {"plan": "basic", "tenure_months": 3, "monthly_charges": 80.5}
    assert call(srv, {"records": [shuffled]}) == call(srv, {"records": [GOOD]})


def test_a_large_request_is_scored_in_one_call():
    model = loaded()
    records = [{"monthly_charges": float(c), "tenure_months": int(t), "plan": p}
               for c, t, p in FRAME.itertuples(index=False)]
    status, answer = call(server(model), {"records": records})
    assert status == 200 and len(answer["predictions"]) == len(FRAME)
    np.testing.assert_allclose(answer["predictions"], model.predictor.predict(SCHEMA.encode_frame(FRAME)), rtol=1e-6)


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b"{", 400, "invalid_json"),
    (b'{"records": []}', 400, "empty"),
    (b'{"records": [{"monthly_charges": "x"}]}', 400, "invalid_record"),
    (b'{"records": [{}], "version": "v0"}', 404, "unknown_version"),
])
def test_bad_requests_get_their_status_and_are_counted_by_reason(body, status, reason):
    srv = server()
    got, answer = call(srv, body)
    assert got == status and set(answer) == {"error", "fields"}
    assert srv.metrics._errors.labels("v1", reason)._value.get() == 1


def test_metrics_count_predictions_and_scores_per_version():
    srv = server()
    call(srv, {"records": [GOOD, GOOD]})
    assert srv.metrics.predictions._value.get() == 2
    assert sum(b.get() for b in srv.metrics.score._buckets) == 2
    assert sum(b.get() for b in srv.metrics.duration._buckets) == 1


def test_score_buckets_are_the_reference_prediction_edges():
    model = loaded()
    assert score_buckets(model) == sorted(model.reference.prediction.edges)
    assert score_buckets(LoadedModel(model.card, None, model.predictor)) == [i / 10 for i in range(1, 11)]


def test_ready_only_once_loaded_and_the_metric_names_are_the_shared_ones():
    srv = server()
    assert srv.__is_ready__() is True
    assert srv.metrics.duration._name == names.SERVER_DURATION
    assert tuple(b for b in srv.metrics.duration._upper_bounds[:-1]) == names.LATENCY_BUCKETS


def test_a_config_without_a_model_uri_or_with_another_version_is_refused():
    with pytest.raises(cfg.ConfigError, match=r"model\.uri"):
        ModelServer.inner(config=cfg.ServeConfig(name="x", model=cfg.ModelRef()), loader=lambda uri: loaded())
    conf = cfg.ServeConfig(name="x", model=cfg.ModelRef(uri="file:///m", version="v9"))
    with pytest.raises(cfg.ConfigError, match="'v9' was asked for"):
        ModelServer.inner(config=conf, loader=lambda uri: loaded(), registry=CollectorRegistry())


def test_entity_keyed_records_get_their_features_from_the_online_store():
    # The lookup's contract (features.online_values): a stored null is None, a feature the store has nothing for is
    # left out, an unknown entity gets {}.
    store = {7: {"monthly_charges": 80.5, "tenure_months": 3, "plan": "basic"},
             8: {"monthly_charges": None, "tenure_months": None},
             10: {"monthly_charges": None, "tenure_months": 3, "plan": "basic"}}
    seen = []

    def lookup(repo, service, rows):
        seen.append((repo, service, rows))
        return [store.get(r["customer_id"], {}) for r in rows]

    srv = server(onlineFeatures={"featureService": "churn_v1", "entityKeys": ["customer_id"]},
                 featureStore={"repoPath": "/etc/feast"})
    srv.lookup = lookup
    status, answer = call(srv, {"records": [{"customer_id": 7}, {**GOOD, "customer_id": 9},
                                            {"customer_id": 7, "plan": "premium"}]})
    assert status == 200
    assert seen == [("/etc/feast", "churn_v1", [{"customer_id": 7}, {"customer_id": 7}])]
    direct = srv.model.predictor.predict(SCHEMA.encode_records([GOOD, GOOD, {**GOOD, "plan": "premium"}]))
    np.testing.assert_allclose(answer["predictions"], direct, rtol=1e-6)
    # A null in the store is a missing value, scored as the learner scores one (as in training).
    status, answer = call(srv, {"records": [{"customer_id": 10}]})
    assert status == 200
    np.testing.assert_allclose(answer["predictions"],
                               srv.model.predictor.predict(SCHEMA.encode_records([{**GOOD, "monthly_charges": None}])),
                               rtol=1e-6)
    # An entity the store does not know, or lacks a feature of: a 422 naming the entity, not a 5xx.
    status, answer = call(srv, {"records": [GOOD, {"customer_id": 12345}, {"customer_id": 8}]})
    assert status == 422
    assert answer["error"] == "no online features (feature service 'churn_v1') for customer_id=12345; customer_id=8"
    assert answer["fields"] == ["records[1]: customer_id=12345 is not in the online store",
                                "records[2]: the online store has no plan for customer_id=8"]


def test_an_xgboost_learner_scores_on_one_thread_per_worker():
    srv = server()
    params = json.loads(srv.model.predictor.learner.save_config())["learner"]["generic_param"]
    assert params["nthread"] == "1"


def test_an_online_store_failure_is_a_503_saying_so():
    def lookup(repo, service, rows):
        raise RuntimeError("redis at 10.0.0.5:6379 refused the connection")

    srv = server(onlineFeatures={"featureService": "churn_v1", "entityKeys": ["customer_id"]})
    srv.lookup = lookup
    status, answer = call(srv, {"records": [{"customer_id": 7}]})
    assert status == 503 and "refused the connection" in answer["error"]


def concurrent(srv: ModelServer, bodies: list[bytes]) -> list[tuple[int, dict]]:
    """The bodies handled concurrently on one event loop, as a worker's requests are."""
    async def main():
        return await asyncio.gather(*(srv.handle(b) for b in bodies))

    return asyncio.run(main())


def one_row_bodies(n: int) -> list[bytes]:
    return [json.dumps({"records": [{"monthly_charges": float(c), "tenure_months": int(t), "plan": p}]}).encode()
            for c, t, p in FRAME.head(n).itertuples(index=False)]


def test_concurrent_requests_are_scored_in_batches_with_the_answers_unbatched_scoring_gives():
    bodies = one_row_bodies(40)
    batched = server(batching={"enabled": True, "maxBatchSize": 16, "maxLatencyMs": 5})
    plain = server(batching={"enabled": False})
    got = concurrent(batched, bodies)
    want = [call(plain, b) for b in bodies]
    assert got == want  # identical, not merely close
    sizes = batched.metrics.batch_size._sum.get(), sum(b.get() for b in batched.metrics.batch_size._buckets)
    assert sizes[0] == 40 and sizes[1] < 40, f"{sizes[1]} batches for 40 rows: nothing was batched"
    assert sum(b.get() for b in batched.metrics.batch_wait._buckets) == 40  # one queue wait per request
    assert plain.batcher is None and sum(b.get() for b in plain.metrics.batch_size._buckets) == 0


class Exploding:
    """A learner whose every prediction fails, counting its calls."""

    calls = 0

    def inplace_predict(self, matrix):
        Exploding.calls += 1
        raise RuntimeError("out of cheese")

    def set_param(self, params):
        pass


def test_a_failing_batch_is_a_500_for_each_request_counted_once_each_and_never_scored_again():
    model = loaded()
    broken = LoadedModel(model.card, model.reference, Predictor(Exploding(), "xgboost", "binary"))
    srv = server(broken, batching={"enabled": True, "maxBatchSize": 16, "maxLatencyMs": 5})
    Exploding.calls = 0
    answers = concurrent(srv, one_row_bodies(6))
    assert [status for status, _ in answers] == [500] * 6
    assert "RuntimeError: out of cheese" in answers[0][1]["error"]
    assert srv.metrics._errors.labels("v1", "scoring_failed")._value.get() == 6
    assert Exploding.calls < 6  # batched: fewer calls than requests, and no request scored a second time
    assert srv.metrics.predictions._value.get() == 0


@pytest.mark.parametrize(("env", "framework", "built", "device"), [
    ({}, "xgboost", True, "cpu"),
    ({"MLCYCLE_DEVICE": ""}, "sklearn", False, "cpu"),
    ({"MLCYCLE_DEVICE": "cpu"}, "sklearn", True, "cpu"),
    ({"MLCYCLE_DEVICE": "cuda"}, "xgboost", True, "cuda"),
    ({"MLCYCLE_DEVICE": " CUDA "}, "xgboost", True, "cuda"),
])
def test_the_scoring_device_follows_the_pods_gpu(env, framework, built, device):
    assert scoring_device(env, framework, cuda_built=built) == device


@pytest.mark.parametrize(("env", "framework", "built", "reason"), [
    ({"MLCYCLE_DEVICE": "tpu"}, "xgboost", True, "expected cpu or cuda, got 'tpu'"),
    ({"MLCYCLE_DEVICE": "cuda"}, "sklearn", True, "sklearn models score on CPU only"),
    ({"MLCYCLE_DEVICE": "cuda"}, "xgboost", False, "built without CUDA"),
])
def test_a_gpu_the_model_cannot_use_is_a_config_error_not_a_silent_cpu(env, framework, built, reason):
    with pytest.raises(cfg.ConfigError, match=reason):
        scoring_device(env, framework, cuda_built=built)


def _cuda_device() -> bool:
    import shutil
    import subprocess

    if not xgb.build_info().get("USE_CUDA") or shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _cuda_device(), reason="no CUDA GPU on this machine: GPU and CPU scores are compared "
                                               "only where one is")
def test_gpu_and_cpu_scores_agree_to_the_stated_tolerance():
    model = loaded()
    matrix = SCHEMA.encode_frame(FRAME)
    on_cpu = model.predictor.predict(matrix)
    model.predictor.learner.set_param({"device": "cuda"})
    np.testing.assert_allclose(model.predictor.predict(matrix), on_cpu, atol=1e-5, rtol=0)
