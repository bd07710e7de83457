"""Trials get their matrices from Ray's object store, read-only: every estimator must still fit on them (scikit-learn's
forests refused a read-only matrix with a missing value: "buffer source array is read-only")."""

from __future__ import annotations

import numpy as np
import pytest

from mlcycle_runtime.train import learners


@pytest.mark.parametrize("estimator", ["sklearn.ensemble.RandomForestClassifier",
                                       "sklearn.ensemble.HistGradientBoostingClassifier"])
def test_a_scikit_learn_estimator_fits_read_only_arrays(estimator):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    x[3, 1] = np.nan  # a missing value, as encoded: the forests' missing-value path wants a writable buffer
    x.flags.writeable = False
    y.flags.writeable = False
    learner = learners.Learner(framework="sklearn", task="binary", estimator=estimator,
                               fixed={"n_estimators": 5} if "Forest" in estimator else {"max_iter": 5}, n_classes=2)
    model = learners.fit(learner, {}, x, y)
    assert learners.predict(learner, model, x).shape[0] == 200
    assert not x.flags.writeable  # the caller's array is left as it was
