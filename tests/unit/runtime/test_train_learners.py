"""Learners: params merged under the sampled config, sklearn estimators by name, fits scored like the server."""

from __future__ import annotations

import numpy as np
import pytest

from mlcycle_runtime.model import Predictor
from mlcycle_runtime.train import learners


def xy(rows: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.5, rows) > 0).astype(np.int64)
    return x, y


def test_sampled_params_override_fixed_ones_and_rounds_leave_the_booster():
    learner = learners.Learner("xgboost", "binary", {"max_depth": 3, "num_boost_round": 40, "eta": 0.1})
    params, rounds = learners.xgb_params(learner, {"max_depth": 6})
    assert rounds == 40
    assert params == {"max_depth": 6, "eta": 0.1, "objective": "binary:logistic", "nthread": 1, "verbosity": 0}


@pytest.mark.parametrize(("task", "objective"), [("regression", "reg:squarederror"),
                                                 ("multiclass", "multi:softprob")])
def test_objective_follows_the_task(task, objective):
    params, rounds = learners.xgb_params(learners.Learner("xgboost", task, n_classes=4), {})
    assert params["objective"] == objective and rounds == learners.DEFAULT_ROUNDS
    assert (params.get("num_class") == 4) == (task == "multiclass")


def test_the_default_sklearn_estimator_handles_missing_values():
    est = learners.make_estimator(learners.Learner("sklearn", "binary", {"max_iter": 20}), {"learning_rate": 0.2})
    assert type(est).__name__ == "HistGradientBoostingClassifier"
    assert (est.max_iter, est.learning_rate) == (20, 0.2)


@pytest.mark.parametrize(("estimator", "params", "message"), [
    ("os.system", {}, "name a scikit-learn class"),
    ("sklearn.ensemble.NoSuchForest", {}, "does not exist in this scikit-learn"),
    ("sklearn.linear_model.LogisticRegression", {"depth": 3}, "model.params for LogisticRegression: "),
])
def test_bad_estimators_are_refused_in_words(estimator, params, message):
    with pytest.raises(learners.LearnerError, match=message):
        learners.make_estimator(learners.Learner("sklearn", "binary", params, estimator), {})


def test_unsupported_frameworks_are_refused():
    with pytest.raises(learners.LearnerError, match=r"model\.framework torch is not supported"):
        learners.check(learners.Learner("torch", "binary"))


def test_xgboost_rejects_bad_params_in_words():
    x, y = xy()
    with pytest.raises(learners.LearnerError, match="xgboost rejected the model params"):
        learners.fit(learners.Learner("xgboost", "binary", {"max_depth": -3}), {}, x, y, rounds=2)


@pytest.mark.parametrize(("framework", "estimator"), [("xgboost", None),
                                                     ("sklearn", "sklearn.linear_model.LogisticRegression")])
def test_a_fit_scores_through_the_servers_predictor(framework, estimator):
    x, y = xy()
    learner = learners.Learner(framework, "binary", {}, estimator)
    model = learners.fit(learner, {}, x, y, rounds=10)
    scores = learners.predict(learner, model, x)
    assert np.array_equal(scores, Predictor(model, framework, "binary").predict(x))
    assert scores.shape == (len(x),) and ((scores >= 0) & (scores <= 1)).all()
    assert ((scores > 0.5) == y).mean() > 0.75


def test_the_round_callback_sees_every_round():
    x, y = xy()
    seen = []
    learner = learners.Learner("xgboost", "binary")
    scorer = learners.ValidationScorer(learner, x, y, seen.append)
    learners.fit_xgboost(learner, {}, x, y, rounds=5, callbacks=[scorer.callback])
    assert [m["rounds"] for m in seen] == [1, 2, 3, 4, 5]
    assert seen[-1]["roc_auc"] >= seen[0]["roc_auc"]


def test_the_controller_registry_hands_each_trials_controller_out_once():
    # A stopping trial takes its Ray Train controller from the registry to abort it; a finished one finds none.
    registry = learners.ControllerRegistry()
    registry.add("trial-a", "controller-a")
    registry.add("trial-b", "controller-b")
    assert registry.pop("trial-a") == "controller-a"
    assert registry.pop("trial-a") is None
    assert registry.pop("trial-b") == "controller-b"


def test_xgboosts_collective_failure_is_a_lost_peer_not_bad_params(monkeypatch):
    """In data-parallel training a round's allreduce fails when another worker's connection closes; that is not
    the params' fault, and the failure says so (the Ray cluster then names the pod that went)."""
    import xgboost as xgb

    def broken(*_, **__):
        raise xgb.core.XGBoostError("[09:58:16] /__w/xgboost/xgboost/src/collective/result.cc:83: \n"
                                    "- [histogram.h:197|09:58:16]: Connection reset by peer")

    monkeypatch.setattr(xgb, "train", broken)
    with pytest.raises(learners.PeerLost, match="another training worker failed"):
        learners.fit_xgboost(learners.Learner("xgboost", "binary"), {}, np.zeros((4, 2)), np.zeros(4))
