"""The router's pure parts: weighted, sticky and shadow choice, tables from config and status, the operator's
Service naming, the agreement rule, EndpointSlice resolution and the metric updates."""

from __future__ import annotations

import random

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from mlcycle_runtime.config import RouterConfig
from mlcycle_runtime.reference import Histogram, Reference
from mlcycle_runtime.router import table as tables
from mlcycle_runtime.router.endpoints import Endpoints, slice_from_object, slices_by_name
from mlcycle_runtime.router.table import Route, RoutingTable, agree, child_name, from_config, from_traffic
from mlcycle_runtime.router.telemetry import RouterMetrics

V1 = Route("v1", 90, "stable", 0, "http://a:1")
V2 = Route("v2", 10, "candidate", 0, "http://b:1")
V3 = Route("v3", 0, "candidate", 10, "http://c:1")
CANARY = RoutingTable((V1, V2, V3))


def config(**extra) -> RouterConfig:
    return RouterConfig.model_validate({"name": "churn", "namespace": "ml", **extra})


# --- weighted choice ------------------------------------------------------------------------------------------


def test_weighted_choice_splits_the_unit_interval_by_weight():
    draws = [i / 10_000 for i in range(10_000)]
    chosen = [CANARY.choose(d).version for d in draws]
    assert chosen.count("v1") == 9_000
    assert chosen.count("v2") == 1_000
    assert "v3" not in chosen  # weight 0: only ever mirrored


def test_weighted_choice_with_random_draws_matches_the_weights():
    rng = random.Random(7)
    table = RoutingTable((Route("a", 50, "stable", 0, "u"), Route("b", 30, "candidate", 0, "u"),
                          Route("c", 20, "candidate", 0, "u")))
    n = 20_000
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(n):
        counts[table.choose(rng.random()).version] += 1
    result = stats.chisquare([counts["a"], counts["b"], counts["c"]], [n * 0.5, n * 0.3, n * 0.2])
    assert result.pvalue > 1e-4, counts


def test_weights_need_not_sum_to_100():
    table = RoutingTable((Route("a", 1, "stable", 0, "u"), Route("b", 3, "candidate", 0, "u")))
    assert [table.choose(d).version for d in (0.0, 0.24, 0.25, 0.99)] == ["a", "a", "b", "b"]


def test_no_weight_falls_back_to_stable_and_empty_table_to_none():
    table = RoutingTable((Route("a", 0, "stable", 0, "u"), Route("b", 0, "candidate", 50, "u")))
    assert table.choose(0.5).version == "a"
    assert RoutingTable().choose(0.5) is None
    assert not RoutingTable()
    assert RoutingTable((Route("b", 0, "candidate", 0, "u"),)).choose(0.1) is None


def test_stable_is_the_heaviest_stable_route():
    table = RoutingTable((Route("old", 10, "stable", 0, "u"), Route("new", 90, "stable", 0, "u")))
    assert table.stable.version == "new"
    assert RoutingTable((V2,)).stable is None


# --- sticky and shadow ------------------------------------------------------------------------------------


def test_sticky_header_naming_a_routed_version_wins():
    assert CANARY.pick("v2", 0.0).version == "v2"
    assert CANARY.pick("v3", 0.0).version == "v3"  # a shadow-only version can be asked for by name (A/B)


@pytest.mark.parametrize("sticky", [None, "", "v9", "V2"])
def test_sticky_header_naming_no_routed_version_is_ignored(sticky):
    assert CANARY.pick(sticky, 0.95).version == "v2"
    assert CANARY.pick(sticky, 0.10).version == "v1"


def test_shadow_mirrors_its_percent_of_requests():
    draws = iter([0.05, 0.0999, 0.10, 0.5])
    picked = [CANARY.mirrors(V1, lambda: next(draws)) for _ in range(4)]
    assert picked == [[V3], [V3], [], []]


def test_shadow_never_mirrors_to_the_version_that_answered():
    shadowing = Route("v2", 10, "candidate", 100, "u")
    table = RoutingTable((V1, shadowing))
    assert table.mirrors(shadowing, lambda: 0.0) == []
    assert table.mirrors(V1, lambda: 0.0) == [shadowing]
    assert RoutingTable((V1, V2)).mirrors(V1, lambda: 0.0) == []


def test_shadow_share_over_many_requests():
    rng = random.Random(3)
    n = 10_000
    mirrored = sum(bool(CANARY.mirrors(V1, rng.random)) for _ in range(n))
    assert stats.binomtest(mirrored, n, 0.10).pvalue > 1e-4, mirrored


# --- tables from config and from status ---------------------------------------------------------------------


def test_table_from_config():
    cfg = config(routes=[{"version": "v1", "weight": 90, "role": "stable", "url": "http://x:3000"},
                         {"version": "v2", "weight": 10, "role": "candidate", "shadowPercent": 5, "url": "http://y"}])
    table = from_config(cfg)
    assert table.routes == (Route("v1", 90, "stable", 0, "http://x:3000"), Route("v2", 10, "candidate", 5, "http://y"))
    assert table.stable.version == "v1"
    assert table.shadows == (table.by_version["v2"],)


def test_table_from_status_traffic_uses_config_urls_else_the_operator_service():
    cfg = config(routes=[{"version": "v1", "weight": 100, "url": "http://127.0.0.1:9001"}])
    traffic = [{"version": "v1", "weight": 80, "role": "stable"},
               {"version": "20261123-101500-ab12cd", "weight": 20, "role": "candidate", "shadowPercent": 0},
               {"version": "v3", "weight": 0, "role": "candidate", "shadowPercent": 10}]
    table = from_traffic(traffic, cfg)
    assert [(r.version, r.weight, r.role, r.shadow_percent) for r in table.routes] == [
        ("v1", 80, "stable", 0), ("20261123-101500-ab12cd", 20, "candidate", 0), ("v3", 0, "candidate", 10)]
    assert table.by_version["v1"].url == "http://127.0.0.1:9001"
    assert table.by_version["20261123-101500-ab12cd"].url == "http://churn-v-20261123-101500-ab12cd.ml.svc:3000"
    assert table.by_version["v3"].url == "http://churn-v-v3.ml.svc:3000"


@pytest.mark.parametrize(("entry", "message"), [
    ({"version": "v1", "weight": 101, "role": "stable"}, "weight must be 0..100"),
    ({"version": "v1", "weight": "50", "role": "stable"}, "weight must be 0..100"),
    ({"version": "v1", "weight": 5, "role": "champion"}, "unknown role"),
    ({"version": "v1", "weight": 5, "role": "stable", "shadowPercent": -1}, "shadowPercent must be 0..100"),
])
def test_bad_traffic_entries_are_refused_with_the_field(entry, message):
    with pytest.raises(ValueError, match=message):
        from_traffic([entry], config())


# The operator's child_name (operator/mlcycle_operator/resources/common.py), computed there and copied here.
@pytest.mark.parametrize(("parts", "expected"), [
    (("churn", "v", "v3"), "churn-v-v3"),
    (("churn", "v", "20261123-101500-ab12cd"), "churn-v-20261123-101500-ab12cd"),
    (("Churn_Model", "v", "V1.2"), "churn-model-v-v1-2"),
    (("a" * 40, "v", "20261123-101500-ab12cd-extra-long-version"),
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-v-20261123-10-84ab7341"),
    (("my.deploy", "v", "--x--"), "my-deploy-v---x"),
])
def test_child_name_matches_the_operator(parts, expected):
    assert child_name(*parts) == expected


def test_version_url_matches_the_operator():
    assert tables.version_url("churn", "ml", "v3") == "http://churn-v-v3.ml.svc:3000"


# --- the agreement rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "shadow", "expected"), [
    ([0.30], [0.33], True),
    ([0.30, 0.9], [0.35, 0.86], True),
    ([0.30], [0.36], False),
    ([0.30, 0.9], [0.30, 0.7], False),
    ([0.30], [0.30, 0.30], False),
    ([], [], True),
    ([0.3], [float("nan")], False),
])
def test_agreement_within_tolerance(answer, shadow, expected):
    assert agree(answer, shadow, 0.05) is expected


def test_agreement_tolerance_is_a_parameter():
    assert agree([10.0], [10.4], tolerance=0.5)
    assert not agree([10.0], [10.6], tolerance=0.5)


# --- EndpointSlices ---------------------------------------------------------------------------------------


def endpoint_slice(name, service, addresses, ports, ready=True):
    return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
            "ports": [{"name": n, "port": p} for n, p in ports]}


def test_endpoints_resolve_a_service_url_to_ready_addresses():
    endpoints = Endpoints("ml")
    endpoints.replace(slices_by_name([
        endpoint_slice("churn-v-v1-abc", "churn-v-v1", ["127.0.0.2", "127.0.0.3"], [("http", 41001)]),
        endpoint_slice("churn-v-v1-def", "churn-v-v1", ["127.0.0.4"], [("http", 41001)], ready=False),
        endpoint_slice("other", "churn-v-v2", ["127.0.0.9"], [("http", 42000)]),
    ]))
    assert set(endpoints.targets("http://churn-v-v1.ml.svc:3000")) == {"http://127.0.0.2:41001",
                                                                       "http://127.0.0.3:41001"}
    assert endpoints.pick("http://churn-v-v1.ml.svc:3000") in {"http://127.0.0.2:41001", "http://127.0.0.3:41001"}
    assert endpoints.pick("http://churn-v-v1.ml.svc.cluster.local:3000/").startswith("http://127.0.0.")
    # Not a Service of this namespace, or nothing ready: the URL itself (DNS may still know it).
    assert endpoints.pick("http://churn-v-v1.other.svc:3000") == "http://churn-v-v1.other.svc:3000"
    assert endpoints.pick("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert endpoints.pick("http://churn-v-v9.ml.svc:3000") == "http://churn-v-v9.ml.svc:3000"
    endpoints.replace({})
    assert endpoints.targets("http://churn-v-v1.ml.svc:3000") == ()


def test_endpoint_port_choice_and_unknown_readiness():
    endpoints = Endpoints("ml")
    endpoints.replace(slices_by_name([
        {"metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "svc"}},
         "endpoints": [{"addresses": ["::1"]}],  # readiness unknown counts as ready
         "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}]},
        {"metadata": {"name": "t", "labels": {"kubernetes.io/service-name": "same"}},
         "endpoints": [{"addresses": ["10.0.0.1"]}],
         "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 3000}]},
    ]))
    assert endpoints.targets("http://svc.ml.svc:3000") == ("http://[::1]:8000",)
    assert endpoints.targets("http://same.ml.svc:3000") == ("http://10.0.0.1:3000",)
    assert slice_from_object({"metadata": {"name": "x", "labels": {}}, "endpoints": []}) is None


# --- metric updates ----------------------------------------------------------------------------------------


def samples(registry) -> dict[tuple[str, frozenset], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_bin_features_and_predictions_against_the_reference():
    metrics = RouterMetrics("ml", "churn")
    assert not metrics.binning
    metrics.observe_predict("v1", [{"tenure": 15}], [0.5])  # no reference yet: nothing binned
    reference = Reference(rows=10, features={
        "tenure": Histogram("numeric", [1, 1, 1, 1], edges=[10.0, 20.0, 30.0]),
        "plan": Histogram("categorical", [1, 1, 0], categories=["basic", "pro"])},
        prediction=Histogram("numeric", [1, 1, 1], edges=[0.25, 0.45]))
    metrics.set_reference(reference)
    metrics.observe_predict("v1", [{"tenure": 15, "plan": "pro"}, {"tenure": 35, "plan": "gold"},
                                   {"tenure": None}, "not a record"], [0.3, 0.5, 0.1])
    metrics.request("v1", 200, 0.004)
    metrics.shadow("v3", "agree")
    got = samples(metrics.registry)

    def value(name, **labels):
        return got.get((name, frozenset({"namespace": "ml", "deployment": "churn", **labels}.items())))

    bins = "mlcycle_router_feature_values_total"
    assert value(bins, version="v1", feature="tenure", bin="1") == 1
    assert value(bins, version="v1", feature="tenure", bin="3") == 1
    assert value(bins, version="v1", feature="tenure", bin="missing") == 1
    assert value(bins, version="v1", feature="plan", bin="1") == 1
    assert value(bins, version="v1", feature="plan", bin="2") == 1  # unseen category: the last bin
    assert value(bins, version="v1", feature="plan", bin="missing") == 1
    assert [value(bins, version="v1", feature="prediction", bin=b) for b in "012"] == [1, 1, 1]
    assert value("mlcycle_router_requests_total", version="v1", code="200") == 1
    assert value("mlcycle_router_request_duration_seconds_bucket", version="v1", le="0.005") == 1
    assert value("mlcycle_router_request_duration_seconds_bucket", version="v1", le="0.003") == 0
    assert value("mlcycle_router_shadow_comparisons_total", version="v3", result="agree") == 1


def test_every_bin_of_a_routed_version_exists_at_zero_before_its_first_request():
    """A series born on its first hit loses what it counted before Prometheus first scraped it (increase()),
    which showed as drift on unchanged traffic: every bin is exported at 0 as soon as the version is routed."""
    metrics = RouterMetrics("ml", "churn")
    metrics.announce(["v1"])  # routed before the reference is loaded: nothing to create yet
    reference = Reference(rows=10, features={
        "tenure": Histogram("numeric", [1, 1, 1, 1], edges=[10.0, 20.0, 30.0]),
        "plan": Histogram("categorical", [1, 1, 0], categories=["basic", "pro"])},
        prediction=Histogram("numeric", [1, 1, 1], edges=[0.25, 0.45]))
    metrics.set_reference(reference)
    metrics.announce(["v1", "v2"])
    got = samples(metrics.registry)
    bins = "mlcycle_router_feature_values_total"
    series = {(dict(labels)["version"], dict(labels)["feature"], dict(labels)["bin"]): value
              for (name, labels), value in got.items() if name == bins}
    expected = {(v, f, b) for v in ("v1", "v2") for f, labels in (
        ("tenure", ["0", "1", "2", "3", "missing"]), ("plan", ["0", "1", "2", "missing"]),
        ("prediction", ["0", "1", "2", "missing"])) for b in labels}
    assert set(series) == expected
    assert set(series.values()) == {0.0}
    metrics.observe_predict("v1", [{"tenure": 15, "plan": "pro"}], [0.3])
    after = samples(metrics.registry)
    assert after[(bins, frozenset({"namespace": "ml", "deployment": "churn", "version": "v1", "feature": "tenure",
                                   "bin": "1"}.items()))] == 1
