"""Search-space translation to Ray Tune, the plan's trial count, the scheduler, and progress."""

from __future__ import annotations

import importlib.util

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import sample

from mlcycle_runtime.config import SearchDimension, Tuning
from mlcycle_runtime.train import search
from tests.harness.pytest_support import unavailable


def tuning(space: dict, **kw) -> Tuning:
    return Tuning.model_validate({"searchSpace": space, **kw})


def test_each_type_becomes_its_tune_domain():
    space = search.plan(tuning({
        "eta": {"type": "loguniform", "lower": 0.01, "upper": 0.3},
        "subsample": {"type": "uniform", "lower": 0.6, "upper": 1.0},
        "max_depth": {"type": "randint", "lower": 2, "upper": 8},
        "booster": {"type": "choice", "values": ["gbtree", "dart"]},
        "min_child_weight": {"type": "grid", "values": ["1", "5"]},
    }), "roc_auc", "max").space
    assert isinstance(space["eta"], sample.Float) and isinstance(space["eta"].sampler, sample.LogUniform)
    assert (space["eta"].lower, space["eta"].upper) == (0.01, 0.3)
    assert isinstance(space["subsample"], sample.Float) and isinstance(space["subsample"].sampler, sample.Uniform)
    assert isinstance(space["max_depth"], sample.Integer) and (space["max_depth"].lower,
                                                               space["max_depth"].upper) == (2, 8)
    assert isinstance(space["booster"], sample.Categorical) and space["booster"].categories == ["gbtree", "dart"]
    assert space["min_child_weight"] == {"grid_search": [1, 5]}


@pytest.mark.parametrize(("raw", "value"), [("3", 3), ("0.1", 0.1), ("true", True), ("gbtree", "gbtree"),
                                            (7, 7), ('"x"', "x")])
def test_candidate_values_are_parsed_as_json_first(raw, value):
    assert search.parse_value(raw) == value


def test_random_search_multiplies_grids_by_samples():
    plan = search.plan(tuning({"a": {"type": "grid", "values": ["1", "2", "3"]},
                               "b": {"type": "uniform", "lower": 0, "upper": 1}}, numSamples=4), "roc_auc", "max")
    assert (plan.num_samples, plan.total, plan.search_alg) == (4, 12, None)


def test_grid_search_runs_each_point_once_and_turns_choices_into_grids():
    plan = search.plan(tuning({"a": {"type": "grid", "values": ["1", "2", "3"]},
                               "b": {"type": "choice", "values": ["x", "y"]}}, numSamples=5, algorithm="grid"),
                       "roc_auc", "max")
    assert (plan.num_samples, plan.total) == (1, 6)
    assert plan.space["b"] == {"grid_search": ["x", "y"]}


def test_grid_search_refuses_continuous_dimensions():
    with pytest.raises(search.SearchError, match=r"tuning.searchSpace.eta: grid search needs discrete values"):
        search.plan(tuning({"eta": {"type": "uniform", "lower": 0, "upper": 1}}, algorithm="grid"), "roc_auc", "max")


@pytest.mark.parametrize(("dim", "message"), [
    ({"type": "uniform", "lower": 1}, "uniform needs lower and upper"),
    ({"type": "randint", "lower": 5, "upper": 2}, "lower 5.0 must be below upper 2.0"),
    ({"type": "loguniform", "lower": 0, "upper": 1}, "loguniform needs lower > 0"),
    ({"type": "choice"}, "choice needs values"),
])
def test_bad_dimensions_name_the_field(dim, message):
    with pytest.raises(search.SearchError, match=f"tuning.searchSpace.x: {message}"):
        search.dimension("x", SearchDimension.model_validate(dim))


def test_random_and_grid_hand_their_concurrency_to_tune():
    spec = tuning({"a": {"type": "grid", "values": ["1", "2"]}}, maxConcurrentTrials=3)
    assert search.plan(spec, "roc_auc", "max").tune_max_concurrent() == 3
    assert search.plan(None, "roc_auc", "max").tune_max_concurrent() == 1


@pytest.mark.parametrize(("at_most", "expected"), [(None, 3), (1, 1), (2, 2), (5, 3)])
def test_the_ray_cluster_caps_trials_at_once_below_max_concurrent_trials(at_most, expected):
    spec = tuning({"a": {"type": "grid", "values": ["1", "2"]}}, maxConcurrentTrials=3)
    assert search.plan(spec, "roc_auc", "max", at_most=at_most).tune_max_concurrent() == expected


def test_optuna_searches_through_ray_tunes_searcher_behind_the_concurrency_limit():
    if importlib.util.find_spec("optuna") is None:
        unavailable("optuna", "the optuna package is not installed (requirements/dev.lock pins it)")
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    spec = tuning({"eta": {"type": "loguniform", "lower": 0.01, "upper": 0.3},
                   "max_depth": {"type": "randint", "lower": 2, "upper": 8},
                   "subsample": {"type": "choice", "values": ["0.7", "1.0"]}},
                  algorithm="optuna", numSamples=6, maxConcurrentTrials=2)
    plan = search.plan(spec, "log_loss", "min")
    assert (plan.num_samples, plan.total, plan.max_concurrent) == (6, 6, 2)
    limiter = plan.search_alg
    assert isinstance(limiter, ConcurrencyLimiter) and limiter.max_concurrent == 2
    assert isinstance(limiter.searcher, OptunaSearch)
    assert (limiter.searcher.metric, limiter.searcher.mode) == ("log_loss", "min")
    # The searcher carries the limit, so Tune must not be given a second one (it refuses a mismatch).
    assert plan.tune_max_concurrent() is None
    # What Tune does with the param space: the searcher suggests inside it, two at a time and no more.
    assert limiter.set_search_properties("log_loss", "min", plan.space)
    first, second, third = (limiter.suggest(f"t{i}") for i in range(3))
    for config in (first, second):
        assert 0.01 <= config["eta"] <= 0.3 and 2 <= config["max_depth"] < 8 and config["subsample"] in (0.7, 1.0)
    assert third is None
    limiter.on_trial_complete("t0", {"log_loss": 0.4, **first})
    assert limiter.suggest("t3") is not None


def test_optuna_refuses_grid_dimensions():
    if importlib.util.find_spec("optuna") is None:
        unavailable("optuna", "the optuna package is not installed (requirements/dev.lock pins it)")
    spec = tuning({"eta": {"type": "grid", "values": ["0.1", "0.3"]}}, algorithm="optuna")
    with pytest.raises(search.SearchError, match=r"tuning\.algorithm optuna cannot search grid dimensions; use choice"):
        search.plan(spec, "roc_auc", "max")


def test_hyperopt_without_its_package_is_refused_in_words():
    spec = tuning({"eta": {"type": "uniform", "lower": 0, "upper": 1}}, algorithm="hyperopt", numSamples=3)
    if importlib.util.find_spec("hyperopt") is None:
        with pytest.raises(search.SearchError, match="the hyperopt package is not installed in this image"):
            search.plan(spec, "roc_auc", "max")
    else:
        plan = search.plan(spec, "roc_auc", "max")
        assert plan.search_alg is not None and plan.total == 3


def test_no_tuning_is_one_trial_of_the_fixed_params():
    assert (search.plan(None, "roc_auc", "max").total, search.plan(None, "roc_auc", "max").space) == (1, {})


def test_asha_acts_on_boosting_rounds():
    spec = tuning({}, scheduler={"type": "asha", "gracePeriod": 3, "reductionFactor": 2})
    asha = search.scheduler(spec, 50)
    assert isinstance(asha, ASHAScheduler)
    assert (asha._time_attr, asha._max_t, asha._reduction_factor) == ("training_iteration", 50, 2)
    assert asha._brackets[0]._rungs[-1][0] == 3  # the first rung is at the grace period


def test_nothing_to_stop_early_means_fifo():
    assert isinstance(search.scheduler(tuning({}), 1), FIFOScheduler)
    assert isinstance(search.scheduler(tuning({}, scheduler={"type": "none"}), 50), FIFOScheduler)
    assert isinstance(search.scheduler(None, 50), FIFOScheduler)


def test_max_rounds_takes_a_searched_round_count_at_its_top():
    spec = tuning({"num_boost_round": {"type": "choice", "values": ["20", "80"]}})
    assert search.max_rounds(spec, 30) == 80
    assert search.max_rounds(None, 30) == 30


def test_progress_keeps_each_trials_best_round_and_throttles_reports(capsys):
    sent = []
    progress = search.Progress(3, "log_loss", "min", on_change=sent.append, interval_s=3600, max_rounds=3)
    progress.result("a", {"eta": 0.1}, {"log_loss": 0.5, "rounds": 1})
    progress.result("a", {"eta": 0.1}, {"log_loss": 0.4, "rounds": 2})
    progress.result("a", {"eta": 0.1}, {"log_loss": 0.45, "rounds": 3})
    progress.done("a")
    progress.result("b", {"eta": 0.3}, {"log_loss": 0.42, "rounds": 1})
    progress.done("b")  # stopped after one of three rounds
    assert progress.best().metrics == {"log_loss": 0.4, "rounds": 2}
    assert len(sent) == 1  # the second finish came within the interval
    assert progress.summary() == {"total": 3, "finished": 2, "stoppedEarly": 1,
                                  "best": {"config": {"eta": 0.1}, "metrics": {"log_loss": 0.4, "rounds": 2.0}}}
    out = capsys.readouterr().out.splitlines()
    assert out == ["trial 1/3 done, best log_loss=0.4 {eta: 0.1}", "trial 2/3 done, best log_loss=0.4 {eta: 0.1}"]


def test_a_failed_trial_counts_as_finished_with_its_error():
    progress = search.Progress(2, "roc_auc", "max")
    progress.done("a", error="ValueError: bad")
    assert (progress.finished, progress.errors, progress.best()) == (1, ["ValueError: bad"], None)


def test_a_failed_trial_keeps_its_whole_error_beside_its_last_line():
    progress = search.Progress(total=2, metric="roc_auc", mode="max")
    progress.done("a", "Refer to the documentation", "OutOfMemoryError: Memory on the node (IP: 10.0.0.1, ...)\n"
                                                     "Refer to the documentation")
    progress.done("b", "ValueError: bad")
    assert progress.errors == ["Refer to the documentation", "ValueError: bad"]
    assert progress.error_texts[0].startswith("OutOfMemoryError: Memory on the node (IP: 10.0.0.1")
    assert progress.error_texts[1] == "ValueError: bad"


def test_a_failed_trials_results_do_not_count_towards_the_best():
    """A trial cut short (a pod lost, a worker out of memory) reported rounds before it failed; they are not a
    finished evaluation, and a search whose every trial failed has no best."""
    progress = search.Progress(2, "roc_auc", "max")
    progress.result("a", {"eta": 0.1}, {"roc_auc": 0.9, "rounds": 5})
    progress.done("a", "RayTaskError: the node died")
    assert progress.best() is None
    progress.result("b", {"eta": 0.3}, {"roc_auc": 0.7, "rounds": 9})
    progress.done("b")
    assert progress.best().config == {"eta": 0.3}


def test_a_running_trials_rounds_are_printed_at_most_every_interval(capsys):
    progress = search.Progress(1, "log_loss", "min", max_rounds=300, round_interval_s=0)
    progress.result("t1", {}, {"log_loss": 0.51234, "rounds": 7})
    progress.result("t1", {}, {"rounds": 8})
    quiet = search.Progress(1, "log_loss", "min", round_interval_s=3600)
    quiet.result("t1", {}, {"log_loss": 0.5, "rounds": 1})
    assert capsys.readouterr().out.splitlines() == ["trial t1: round 7/300, log_loss=0.5123", "trial t1: round 8/300"]


@pytest.mark.parametrize(("written", "headline"), [
    ("Failure # 1 (occurred at 2026-12-06_10-09-20)\nray.exceptions.ActorDiedError: The actor died unexpectedly "
     "before finishing this task.\n\tclass_name: \n\tactor_id: aeacaeadf2e7\n",
     "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."),
    ("Failure # 1\nTraceback (most recent call last):\n  File \"x.py\", line 1, in f\nValueError: bad\n",
     "ValueError: bad"),
    ("Failure # 1\nsomething odd\n", "something odd"),
])
def test_a_failed_trials_headline_is_its_exceptions_line(tmp_path, written, headline):
    """What the job's message quotes of a failed trial: the exception's line, not Ray's detail lines after it."""
    error_file = tmp_path / "error.txt"
    error_file.write_text(written)
    trial = type("Trial", (), {"trial_id": "t1", "error_file": str(error_file)})()
    assert search._trial_error(trial) == (headline, written)
