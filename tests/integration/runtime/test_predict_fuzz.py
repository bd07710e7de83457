"""Hostile input to the data plane: property-based bodies and headers against `POST /predict` of a real model
server (BentoML, adaptive batching on) and of a real router in front of it. No 5xx, an error that says something
for every 4xx, and memory that does not grow with the requests. A fixed seed and bounded examples, plus every
special token spliced into a good record as an explicit example: the same inputs on every run and machine, so a
failure is reproducible and CI time is known."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from tests.harness import server_process
from tests.integration.runtime.test_router import RouterProc, route
from tests.integration.runtime.test_serve import GOOD, make_version, start

# Examples per target and phase; two phases (the second measures memory growth) per target.
EXAMPLES = 150
# How much a server's or router's memory (RSS of its processes) may grow over the second phase: Python's arenas
# and caches settle in the first; a leak of even a few KB per request shows past this.
GROWTH_LIMIT_MB = 40
SEED = 20261206
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# --- what a hostile client sends ---------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)
# A record: each feature kept, dropped, or replaced by any JSON value, plus keys the model does not know.
records = st.builds(
    lambda kept, swapped, extra: {**{k: GOOD[k] for k in kept}, **swapped, **extra},
    st.sets(st.sampled_from(sorted(GOOD))), st.dictionaries(st.sampled_from(sorted(GOOD)), values, max_size=3),
    st.dictionaries(st.text(max_size=10), values, max_size=2))
shaped = st.fixed_dictionaries({"records": st.lists(records | values, max_size=6)},
                               optional={"version": values}).map(lambda body: json.dumps(body).encode())
# Text JSON parsers meet and Python's json.dumps never writes: bare non-finite numbers, huge and long numbers,
# deep nesting, broken UTF-8, truncation.
TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"9" * 5000, b"1" + b"0" * 400, b"-1e39",
          b'"\\ud800"', b"\xff\xfe", b"null", b"[" * 5000 + b"]" * 5000]
tokens = st.sampled_from(TOKENS)


def splice(token: bytes) -> bytes:
    """A good record whose first feature's value is `token`, as raw JSON text."""
    return (b'{"records": [{"tenure_months": ' + token + b', "monthly_charges": 80.5, "support_calls": 2, '
            b'"data_usage_gb": 4.0, "contract": "month-to-month", "plan": "basic", "region": "north"}]}')


spliced = tokens.map(splice)
truncated = st.builds(lambda body, cut: body[:cut], shaped, st.integers(0, 200))
bodies = shaped | values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=300) | tokens | spliced | truncated
version_headers = st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


# --- the targets ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(serve_home) -> Iterator:
    tmp, env = serve_home
    # A version name of its own: BentoML keeps one model store per process, and test_serve makes xgboost-v1.
    srv = start(tmp, make_version(tmp, "xgboost", version="fuzz-v1"), env,
                {"enabled": True, "maxBatchSize": 16, "maxLatencyMs": 5})
    try:
        yield srv
    finally:
        server_process.stop_group(srv.process)


@pytest.fixture(scope="module")
def router(serve_home, server) -> Iterator[RouterProc]:
    tmp, env = serve_home
    proc = RouterProc(tmp, {"name": "churn", "namespace": "ml", "routes": [route("v1", 100, "stable", server.url)]},
                      env=env, name="fuzz-router")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        yield proc
    finally:
        proc.stop()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children (BentoML's arbiter and workers), in MiB."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def fuzz(url: str, pid: int) -> tuple[list[str], float, float, int]:
    """Two fixed-seed runs of the same bodies at `url`: the problems found, RSS after each run, requests sent."""
    problems: list[str] = []
    sent = [0]
    with httpx.Client(timeout=30) as client:

        def one(body: bytes, version: str | None) -> None:
            sent[0] += 1
            headers = {"content-type": "application/json", **({"x-mlcycle-version": version} if version else {})}
            answer = client.post(f"{url}/predict", content=body, headers=headers)
            if answer.status_code >= 500:
                problems.append(f"{answer.status_code} for {body[:200]!r} (version {version!r}): {answer.text[:300]}")
            elif answer.status_code >= 400:
                try:
                    error = answer.json().get("error")
                except ValueError:
                    error = None
                if not error:
                    problems.append(f"{answer.status_code} without an error for {body[:200]!r}: {answer.text[:300]}")

        run = given(body=bodies, version=version_headers)(one)
        for token in TOKENS:  # each special token for sure, not only when the draw picks it
            run = example(body=splice(token), version=None)(run)
        run = FUZZ(seed(SEED)(run))
        run()
        first = rss_mb(pid)
        run()
        second = rss_mb(pid)
    return problems, first, second, sent[0]


@pytest.mark.parametrize("target", ["server", "router"])
def test_fuzzed_predict_requests_get_no_5xx_and_grow_no_memory(target, request):
    proc = request.getfixturevalue(target)
    url, pid = (proc.url, proc.process.pid) if target == "server" else (proc.url, proc.proc.popen.pid)
    problems, first, second, sent = fuzz(url, pid)
    print(f"[fuzz] {target}: {sent} requests, RSS {first:.0f} MiB after the first run, "
          f"{second:.0f} MiB after the second")
    assert not problems, "\n".join(problems[:10])
    assert second - first < GROWTH_LIMIT_MB, f"{target} grew {second - first:.0f} MiB over {EXAMPLES} requests"
    # And it still answers a good request.
    assert httpx.post(f"{url}/predict", json={"records": [GOOD]}, timeout=10).status_code == 200
