"""The router as a real process in front of real upstream HTTP servers on loopback: split, sticky header, shadow
comparisons, metrics, feature bins, reload, 503 and failover; then its ModelDeployment watch against the local
control plane.

The upstreams are small uvicorn apps started from this module (`python -m tests.integration.runtime.test_router
--version v1 --score 0.3 --port N`) that answer /predict with a fixed score per version."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlcycle_runtime.router import app as router_app
from tests.harness import netns
from tests.harness.cluster import free_port
from tests.integration.helpers import wait_for

ROOT = Path(__file__).resolve().parents[3]
RECORDS = [{"tenure": 15, "plan": "pro"}, {"tenure": 35, "plan": "gold"}]
SCORES = {"v1": 0.30, "v2": 0.50, "v3": 0.33}  # v3 agrees with v1 (|0.03| <= 0.05), disagrees with v2


# --- the upstream model server stand-in ------------------------------------------------------------------------


def upstream_app(version: str, score: float, status: int, delay: float):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        code, out, extra = 200, {}, []
        if scope["path"] == "/livez":
            out = {"status": "ok"}
        elif scope["path"] == "/predict":
            if delay:
                await asyncio.sleep(delay)
            try:
                records = json.loads(body)["records"]
                assert isinstance(records, list)
            except (ValueError, KeyError, TypeError, AssertionError):
                code, out = 400, {"error": "body must be {\"records\": [...]}", "fields": ["records"]}
            else:
                code = status
                out = {"model": "churn", "version": version, "predictions": [score] * len(records)}
        else:  # echo, so the test sees what the router forwarded
            query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
            code = int(query.get("status", 200))
            out = {"version": version, "method": scope["method"], "path": scope["path"], "query": query,
                   "headers": {k.decode(): v.decode() for k, v in scope["headers"]}, "body": body.decode()}
            extra = [(b"x-upstream", version.encode())]
        data = json.dumps(out).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": data})

    return app


def serve_upstream(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--version", required=True)
    parser.add_argument("--score", type=float, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", type=int, default=200, help="status of /predict answers (e.g. 500)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each /predict answer")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    uvicorn.run(upstream_app(args.version, args.score, args.status, args.delay), host=args.host, port=args.port,
                loop="uvloop", http="httptools", access_log=False, log_level="warning")


# --- process helpers -------------------------------------------------------------------------------------------


class Proc:
    """A child process with its log in a file; stopped by the fixture that started it."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 namespace: str | None = None) -> None:
        self.log = log
        if namespace is not None:  # a network namespace of tests/harness/netns.py
            args = ["nsenter", f"--net={netns.NETNS_DIR / namespace}", *args]
        with log.open("wb") as out:
            self.popen = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                          env={**os.environ, **(env or {})})

    def wait_http(self, url: str, timeout: float = 60.0, expect: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited {self.popen.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == expect:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} did not answer {expect} within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Upstream:
    """A model server stand-in on loopback or, with `namespace`, on `host` inside that network namespace (and
    then reached from here at its loopback forward)."""

    def __init__(self, tmp: Path, version: str, score: float, *flags: str, host: str = "127.0.0.1",
                 port: int | None = None, namespace: str | None = None) -> None:
        self.version, self.port, self.host = version, port or free_port(), host
        self.url = f"http://{host if namespace is None else netns.host_address(host)}:{self.port}"
        self.proc = Proc([sys.executable, "-m", "tests.integration.runtime.test_router", "--version", version,
                          "--score", str(score), "--port", str(self.port), "--host", host, *flags],
                         tmp / f"upstream-{version}-{self.port}.log", namespace=namespace)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.stop(sig)

    def popen_kill(self) -> None:
        """SIGKILL without waiting: connections it holds break mid-request."""
        self.proc.popen.kill()


class RouterProc:
    """The router on loopback or, with `namespace`, in that network namespace at `address` (reached from here at
    its loopback forward)."""

    def __init__(self, tmp: Path, config: dict, env: dict[str, str] | None = None, name: str = "router",
                 namespace: str | None = None, address: str | None = None) -> None:
        self.port = config.setdefault("port", free_port())
        self.url = f"http://{'127.0.0.1' if namespace is None else netns.host_address(address)}:{self.port}"
        self.config_path = tmp / f"{name}.json"
        self.write(config)
        self.proc = Proc([sys.executable, "-m", "mlcycle_runtime.router", "--config", str(self.config_path),
                          "--host", "127.0.0.1" if namespace is None else "0.0.0.0"], tmp / f"{name}.log", env,
                         namespace=namespace)

    def write(self, config: dict) -> None:
        # Replace, not rewrite in place, as a ConfigMap update does (and so a reader never sees half a file).
        staging = self.config_path.with_suffix(".new")
        staging.write_text(json.dumps(config))
        staging.replace(self.config_path)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        self.proc.stop()


def binomial_plausible(successes: float, n: int, p: float) -> bool:
    """Whether a count is a plausible draw of Binomial(n, p) (two-sided p-value above 1e-4)."""
    from scipy import stats

    return stats.binomtest(int(successes), n, p).pvalue > 1e-4


def value(samples, name: str, **labels: str) -> float:
    """One sample of the churn deployment (namespace "ml" unless given)."""
    return samples.get((name, frozenset({"namespace": "ml", "deployment": "churn", **labels}.items())), 0.0)


def route(version: str, weight: int, role: str, url: str, shadow: int = 0) -> dict:
    return {"version": version, "weight": weight, "role": role, "shadowPercent": shadow, "url": url}


async def _send_many(url: str, n: int, concurrency: int = 16, headers: dict | None = None,
                     body: dict | None = None, on_response=None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> httpx.Response:
            async with semaphore:
                response = await client.post(f"{url}/predict", json=body or {"records": RECORDS}, headers=headers)
            if on_response:
                on_response(response)
            return response

        return await asyncio.gather(*(one() for _ in range(n)))


def send_many(url: str, n: int, **kwargs) -> list[httpx.Response]:
    return asyncio.run(_send_many(url, n, **kwargs))


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("router")


@pytest.fixture(scope="module")
def upstreams(tmp) -> Iterator[dict[str, Upstream]]:
    started = {v: Upstream(tmp, v, s) for v, s in SCORES.items()}
    try:
        for upstream in started.values():
            upstream.proc.wait_http(f"{upstream.url}/livez")
        yield started
    finally:
        for upstream in started.values():
            upstream.stop()


@pytest.fixture(scope="module")
def reference_uri(tmp) -> str:
    """A complete model version holding the reference histograms the router bins against."""
    from mlcycle_runtime import storage
    from mlcycle_runtime.reference import Histogram, Reference

    reference = Reference(rows=100, features={
        "tenure": Histogram("numeric", [25, 25, 25, 25], edges=[10.0, 20.0, 30.0]),
        "plan": Histogram("categorical", [50, 50, 0], categories=["basic", "pro"])},
        prediction=Histogram("numeric", [30, 40, 30], edges=[0.25, 0.45]))
    version_dir = tmp / "v1-export"
    version_dir.mkdir()
    (version_dir / storage.REFERENCE).write_text(json.dumps(reference.to_json()))
    (version_dir / storage.MODEL_CARD).write_text(json.dumps({"name": "churn", "version": "v1"}))
    uri = f"file://{tmp}/store/churn/models/churn/v1"
    storage.publish(version_dir, uri)
    return uri


@pytest.fixture(scope="module")
def router(tmp, upstreams, reference_uri) -> Iterator[RouterProc]:
    """Canary 90/10 on v1/v2 with 10% of requests mirrored to v3."""
    config = {"kind": "ModelDeployment", "name": "churn", "namespace": "ml", "referenceUri": reference_uri,
              "routes": [route("v1", 90, "stable", upstreams["v1"].url),
                         route("v2", 10, "candidate", upstreams["v2"].url),
                         route("v3", 0, "candidate", upstreams["v3"].url, shadow=10)]}
    proc = RouterProc(tmp, config)
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        # Feature binning starts once the reference is loaded, a moment after start-up.
        wait_for(lambda: "reference histograms loaded" in proc.proc.log.read_text(), 10, "loading the reference")
        yield proc
    finally:
        proc.stop()


# --- tests ----------------------------------------------------------------------------------------------


def test_split_metrics_and_feature_bins(router):
    n = 1000
    responses = send_many(router.url, n)
    assert all(r.status_code == 200 for r in responses), Counter(r.status_code for r in responses)
    answered = Counter(r.headers["x-mlcycle-variant"] for r in responses)
    for r in responses:  # each answer is the one of the version its header names
        assert r.json()["predictions"] == [SCORES[r.headers["x-mlcycle-variant"]]] * len(RECORDS)
    assert set(answered) == {"v1", "v2"}
    assert binomial_plausible(answered["v2"], n, 0.10), answered

    samples = router.metrics()
    for version in ("v1", "v2"):
        assert value(samples, "mlcycle_router_requests_total", version=version, code="200") == answered[version]
        assert value(samples, "mlcycle_router_request_duration_seconds_count", version=version) == answered[version]
        bins = {(f, b): value(samples, "mlcycle_router_feature_values_total", version=version, feature=f, bin=b)
                for f, b in [("tenure", "1"), ("tenure", "3"), ("plan", "1"), ("plan", "2"), ("tenure", "0")]}
        # One record per request in tenure bin 1 (10 <= 15 < 20), one in bin 3 (35 >= 30); plan "pro" is bin 1
        # and the unseen "gold" the last bin (2).
        assert bins == {("tenure", "1"): answered[version], ("tenure", "3"): answered[version],
                        ("plan", "1"): answered[version], ("plan", "2"): answered[version], ("tenure", "0"): 0}
    # Predictions against the reference's prediction edges [0.25, 0.45]: v1's 0.30 in bin 1, v2's 0.50 in bin 2.
    assert value(samples, "mlcycle_router_feature_values_total", version="v1", feature="prediction",
                 bin="1") == 2 * answered["v1"]
    assert value(samples, "mlcycle_router_feature_values_total", version="v2", feature="prediction",
                 bin="2") == 2 * answered["v2"]

    # About 10% were mirrored to v3 and compared: agreeing with v1's answers, disagreeing with v2's.
    def shadow_totals():
        s = router.metrics()
        return {r: value(s, "mlcycle_router_shadow_comparisons_total", version="v3", result=r)
                for r in ("agree", "disagree", "error")}

    totals = wait_for(lambda: (t := shadow_totals()) == shadow_totals() and t, 10, "shadow comparisons settling",
                      every=0.3)
    mirrored = sum(totals.values())
    assert binomial_plausible(mirrored, n, 0.10), totals
    assert totals["error"] == 0
    assert totals["agree"] > totals["disagree"] > 0
    assert value(router.metrics(), "mlcycle_router_requests_total", version="v3", code="200") == mirrored


def test_sticky_header_and_shadow_agreement(router):
    before = router.metrics()
    for version in ("v1", "v2"):
        responses = send_many(router.url, 300, headers={"x-mlcycle-variant": version})
        assert {r.headers["x-mlcycle-variant"] for r in responses} == {version}
        assert {r.json()["version"] for r in responses} == {version}
    unknown = send_many(router.url, 50, headers={"x-mlcycle-variant": "v9"})
    assert {r.status_code for r in unknown} == {200}
    assert {r.headers["x-mlcycle-variant"] for r in unknown} <= {"v1", "v2"}

    def delta(result):
        key = "mlcycle_router_shadow_comparisons_total"
        return value(router.metrics(), key, version="v3", result=result) - value(before, key, version="v3",
                                                                                  result=result)

    # Mirrors of v1's answers agree and those of v2's disagree; 300 sticky requests each leave both non-zero.
    wait_for(lambda: delta("agree") > 0 and delta("disagree") > 0, 10, "shadow comparisons")
    assert binomial_plausible(delta("agree") + delta("disagree"), 650, 0.10)


def test_proxies_any_path_method_status_and_headers(router):
    response = httpx.put(f"{router.url}/some/where?status=418&x=1", content=b"payload",
                         headers={"x-custom": "yes", "x-mlcycle-variant": "v2"})
    assert response.status_code == 418
    assert response.headers["x-upstream"] == "v2"
    assert response.headers["x-mlcycle-variant"] == "v2"
    echoed = response.json()
    assert (echoed["method"], echoed["path"], echoed["query"], echoed["body"]) == (
        "PUT", "/some/where", {"status": "418", "x": "1"}, "payload")
    assert echoed["headers"]["x-custom"] == "yes"


def test_bad_request_is_passed_through_as_4xx(router):
    response = httpx.post(f"{router.url}/predict", content=b"{not json", headers={"x-mlcycle-variant": "v1"})
    assert response.status_code == 400
    assert response.json()["fields"] == ["records"]
    assert value(router.metrics(), "mlcycle_router_requests_total", version="v1", code="400") >= 1


def test_probes(router):
    assert httpx.get(f"{router.url}/livez").status_code == 200
    assert httpx.get(f"{router.url}/readyz").status_code == 200


def test_reload_after_config_rewrite(tmp, upstreams):
    config = {"name": "churn", "namespace": "ml", "routes": [route("v1", 100, "stable", upstreams["v1"].url)]}
    proc = RouterProc(tmp, config, name="reload")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        assert {r.headers["x-mlcycle-variant"] for r in send_many(proc.url, 20)} == {"v1"}
        config["routes"] = [route("v1", 0, "stable", upstreams["v1"].url),
                            route("v2", 100, "candidate", upstreams["v2"].url)]
        proc.write(config)
        # The contract: a change takes effect within 2 s.
        wait_for(lambda: httpx.post(f"{proc.url}/predict", json={"records": RECORDS}).headers[
            "x-mlcycle-variant"] == "v2", 2.0, "routing to v2 after the config rewrite")
        assert {r.headers["x-mlcycle-variant"] for r in send_many(proc.url, 50)} == {"v2"}
        # A broken rewrite keeps the table that works.
        proc.config_path.write_text("{broken")
        time.sleep(1.0)
        assert {r.status_code for r in send_many(proc.url, 10)} == {200}
        assert "not applied" in proc.proc.log.read_text()
    finally:
        proc.stop()


def records_of_about(size: int) -> bytes:
    """A valid /predict body of about `size` bytes (within one record's length)."""
    record = json.dumps(RECORDS[0]).encode()
    return b'{"records": [' + b", ".join([record] * max(1, (size - 16) // (len(record) + 2))) + b"]}"


def chunked(body: bytes, size: int = 1024) -> Iterator[bytes]:
    """The body as a stream: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_body_over_the_limit_is_a_413_before_anything_is_proxied(tmp, upstreams):
    proc = RouterProc(tmp, {"name": "churn", "namespace": "ml", "maxRequestBytes": 4096,
                            "routes": [route("v1", 100, "stable", upstreams["v1"].url)]}, name="limited")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        within = records_of_about(4000)
        assert len(within) <= 4096
        answer = httpx.post(f"{proc.url}/predict", content=within, headers={"content-type": "application/json"})
        assert answer.status_code == 200 and answer.headers["x-mlcycle-variant"] == "v1", answer.text
        over = records_of_about(5000)
        declared = httpx.post(f"{proc.url}/predict", content=over, headers={"content-type": "application/json"})
        assert declared.status_code == 413, declared.text
        assert declared.json()["error"] == (f"request body too large: Content-Length is {len(over):,} bytes; this "
                                            "deployment accepts at most 4,096 bytes (spec.serving.maxRequestSize)")
        assert "x-mlcycle-variant" not in declared.headers  # no version was asked
        streamed = httpx.post(f"{proc.url}/predict", content=chunked(over),
                              headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "more than 4,096 bytes arrived" in streamed.json()["error"]
        samples = proc.metrics()
        assert value(samples, "mlcycle_router_requests_total", version="none", code="413") == 2
        assert value(samples, "mlcycle_router_requests_total", version="v1", code="200") == 1
        # The limit follows the config, as the routes do.
        config = json.loads(proc.config_path.read_text())
        proc.write({**config, "maxRequestBytes": 8192})
        wait_for(lambda: httpx.post(f"{proc.url}/predict", content=over,
                                    headers={"content-type": "application/json"}).status_code == 200,
                 5.0, "the raised limit to apply")
    finally:
        proc.stop()


def test_no_upstream_is_503(tmp):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = RouterProc(tmp, {"name": "churn", "namespace": "ml", "routes": [route("v1", 100, "stable", dead)]},
                      name="dead")
    empty = RouterProc(tmp, {"name": "churn", "namespace": "ml", "routes": []}, name="empty")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        response = httpx.post(f"{proc.url}/predict", json={"records": RECORDS})
        assert response.status_code == 503
        assert "v1" in response.json()["error"]
        empty.proc.wait_http(f"{empty.url}/livez")
        assert httpx.get(f"{empty.url}/readyz").status_code == 503
        response = httpx.post(f"{empty.url}/predict", json={"records": RECORDS})
        assert response.status_code == 503
        assert "routing table is empty" in response.json()["error"]
    finally:
        proc.stop()
        empty.stop()


def test_upstream_dying_mid_run_loses_no_request(tmp, upstreams):
    doomed = Upstream(tmp, "v2", SCORES["v2"])
    doomed.proc.wait_http(f"{doomed.url}/livez")
    config = {"name": "churn", "namespace": "ml", "routes": [route("v1", 50, "stable", upstreams["v1"].url),
                                                             route("v2", 50, "candidate", doomed.url)]}
    proc = RouterProc(tmp, config, name="failover")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")

        done = []

        def kill_after_200(response: httpx.Response) -> None:
            done.append(response)
            if len(done) == 200:
                doomed.popen_kill()

        responses = asyncio.run(_send_many(proc.url, 600, concurrency=8, on_response=kill_after_200))
        assert Counter(r.status_code for r in responses) == {200: 600}
        answered = Counter(r.headers["x-mlcycle-variant"] for r in responses)
        assert answered["v1"] > answered["v2"] > 0, answered
        # The failures were counted against the version that failed.
        assert value(proc.metrics(), "mlcycle_router_requests_total", version="v2", code="502") >= 1
    finally:
        proc.stop()
        doomed.stop()


def test_failing_and_slow_versions(tmp, upstreams):
    failing = Upstream(tmp, "v5", 0.3, "--status", "500")
    slow = Upstream(tmp, "v6", 0.3, "--delay", "3")
    config = {"name": "churn", "namespace": "ml",
              "routes": [route("v1", 100, "stable", upstreams["v1"].url),
                         route("v5", 0, "candidate", failing.url),
                         route("v6", 0, "candidate", slow.url, shadow=100)]}
    proc = RouterProc(tmp, config, name="slow")
    try:
        for p in (failing, slow):
            p.proc.wait_http(f"{p.url}/livez")
        proc.proc.wait_http(f"{proc.url}/readyz")
        # A 5xx of a version is the client's answer (and counts against that version).
        response = httpx.post(f"{proc.url}/predict", json={"records": RECORDS}, headers={"x-mlcycle-variant": "v5"})
        assert response.status_code == 500
        assert value(proc.metrics(), "mlcycle_router_requests_total", version="v5", code="500") == 1
        # Every request is mirrored to v6, which takes 3 s: the answers come back while no mirror has finished.
        responses = send_many(proc.url, 20)
        assert {r.status_code for r in responses} == {200}
        shadow = "mlcycle_router_shadow_comparisons_total"
        assert value(proc.metrics(), shadow, version="v6", result="agree") == 0
        wait_for(lambda: value(proc.metrics(), shadow, version="v6", result="agree") == 20, 15, "slow mirrors")
    finally:
        proc.stop()
        failing.stop()
        slow.stop()


def test_reference_unavailable_routes_anyway_and_loads_later(tmp, upstreams, reference_uri):
    missing = f"file://{tmp}/store/churn/models/churn/late"
    config = {"name": "churn", "namespace": "ml", "referenceUri": missing,
              "routes": [route("v1", 100, "stable", upstreams["v1"].url)]}
    proc = RouterProc(tmp, config, env={"MLCYCLE_ROUTER_REFERENCE_RETRY_S": "0.5"}, name="noref")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        assert {r.status_code for r in send_many(proc.url, 10)} == {200}
        bins = "mlcycle_router_feature_values_total"
        assert value(proc.metrics(), bins, version="v1", feature="tenure", bin="1") == 0
        from mlcycle_runtime import storage

        storage.publish(Path(storage.resolve(reference_uri).removeprefix("file://")), missing)
        wait_for(lambda: "reference histograms loaded" in proc.proc.log.read_text(), 5, "loading the reference")
        send_many(proc.url, 10)
        assert value(proc.metrics(), bins, version="v1", feature="tenure", bin="1") == 10
        assert proc.proc.log.read_text().count("unavailable") == 1  # logged once, not at every retry
    finally:
        proc.stop()



# --- against the local control plane ----------------------------------------------------------------------


def endpoint_slice(name: str, service: str, upstream: Upstream) -> dict:
    """A slice as a Service's would be, pointing at an upstream server (a model server pod)."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [upstream.host], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": upstream.port, "protocol": "TCP"}]}


@pytest.fixture
def pod_network() -> Iterator[netns.NodeNetwork]:
    """A node's pod network as the process node makes it (tests/harness/netns.py): the API server refuses
    loopback addresses in EndpointSlices, and test traffic may not go to this machine's own interfaces, so the
    router and its upstreams run in network namespaces of their own on one bridge, reached from here on
    loopback."""
    import shutil

    from tests.harness.pytest_support import unavailable

    reason = "nsenter (util-linux) is not installed" if shutil.which("nsenter") is None else netns.available()
    if reason:
        unavailable("network namespaces", reason)
    network = netns.NodeNetwork(preferred_subnet=9)
    yield network
    network.close()


@pytest.fixture
def pod_upstreams(tmp, pod_network) -> Iterator[dict[str, Upstream]]:
    """Upstreams at pod addresses, which an EndpointSlice may name, each in its own network namespace."""
    started = {}
    for n, (version, score) in enumerate(SCORES.items(), start=2):
        address, port = f"{pod_network.prefix}{n}", free_port()
        namespace = pod_network.add_pod(address, ports=[port], host_ports=[])
        started[version] = Upstream(tmp, version, score, host=address, port=port, namespace=namespace)
    try:
        for upstream in started.values():
            upstream.proc.wait_http(f"{upstream.url}/livez")
        yield started
    finally:
        for upstream in started.values():
            upstream.stop()


@pytest.mark.integration
def test_follows_modeldeployment_status_and_endpointslices(tmp, pod_network, pod_upstreams, cluster, api_client,
                                                           namespace, mlcycle_crds):
    import urllib.parse

    from kubernetes import client

    upstreams = pod_upstreams
    objects = client.CustomObjectsApi(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    objects.create_namespaced_custom_object("mlcycle.io", "v1alpha1", namespace, "modeldeployments", {
        "apiVersion": "mlcycle.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "churn"},
        "spec": {"project": "churn", "model": {"name": "churn-classifier", "version": "v1"}}})

    def set_traffic(*entries: dict) -> None:
        objects.patch_namespaced_custom_object_status("mlcycle.io", "v1alpha1", namespace, "modeldeployments",
                                                      "churn", {"status": {"traffic": list(entries)}})

    set_traffic({"version": "v1", "weight": 100, "role": "stable", "shadowPercent": 0})
    # The operator's Service names (churn-v-<version>) resolve through these slices to the upstreams' pod addresses.
    for version in ("v1", "v2"):
        discovery.create_namespaced_endpoint_slice(namespace, endpoint_slice(
            f"churn-v-{version}-abcde", f"churn-v-{version}", upstreams[version]))
    # The ConfigMap seeds v1 at the operator's URL; the live table comes from the ModelDeployment's status.
    config = {"name": "churn", "namespace": namespace, "port": free_port(),
              "routes": [route("v1", 100, "stable", f"http://churn-v-v1.{namespace}.svc:3000")]}
    # The router in a pod's namespace too, so it reaches the upstreams; the API server is relayed into it.
    router_address = f"{pod_network.prefix}10"
    apiserver_port = urllib.parse.urlsplit(api_client.configuration.host).port
    router_ns = pod_network.add_pod(router_address, ports=[config["port"]], host_ports=[apiserver_port])
    proc = RouterProc(tmp, config, name="watch", namespace=router_ns, address=router_address,
                      env={"MLCYCLE_ROUTER_WATCH": "1", "KUBECONFIG": str(cluster.kubeconfig)})

    def answers(n: int = 20) -> Counter:
        responses = send_many(proc.url, n)
        assert {r.status_code for r in responses} == {200}, [r.text for r in responses][:3]
        return Counter((r.headers["x-mlcycle-variant"], r.json()["predictions"][0]) for r in responses)

    try:
        # Ready once both watches have listed, so the first requests already resolve through the slices.
        proc.proc.wait_http(f"{proc.url}/readyz")
        assert answers() == {("v1", SCORES["v1"]): 20}

        # The rollout moves all traffic to v2: the router follows within 2 s.
        set_traffic({"version": "v1", "weight": 0, "role": "stable"},
                    {"version": "v2", "weight": 100, "role": "candidate"})
        wait_for(lambda: set(answers(5)) == {("v2", SCORES["v2"])}, 2.0, "routing to v2 after the status change")

        # A canary split and a shadow (v3 has no slice yet: mirrors fail and are counted as errors).
        set_traffic({"version": "v1", "weight": 50, "role": "stable"},
                    {"version": "v2", "weight": 50, "role": "candidate", "shadowPercent": 0},
                    {"version": "v3", "weight": 0, "role": "candidate", "shadowPercent": 100})
        wait_for(lambda: len({v for v, _ in answers(40)}) == 2, 2.0, "a 50/50 split")
        shadow = "mlcycle_router_shadow_comparisons_total"
        # Without a slice the mirror falls back to v3's Service name, which no resolver reachable from the pod's
        # namespace answers: the first failure is counted when the lookup gives up or the shadow call's own 10 s
        # timeout ends it, whichever is first (it took over 5 s in 1 of 5 runs).
        wait_for(lambda: value(proc.metrics(), shadow, namespace=namespace, version="v3", result="error") > 0,
                 router_app.SHADOW_TIMEOUT_SECONDS + 5, "mirrors to a version with no endpoints failing", every=0.2)
        # v2's pod moves (its slice now points at another server): requests follow the new endpoint.
        moved_to = endpoint_slice("churn-v-v2-abcde", "churn-v-v2", upstreams["v3"])
        discovery.patch_namespaced_endpoint_slice("churn-v-v2-abcde", namespace, {
            "endpoints": moved_to["endpoints"], "ports": moved_to["ports"]})
        discovery.create_namespaced_endpoint_slice(namespace, endpoint_slice(
            "churn-v-v3-abcde", "churn-v-v3", upstreams["v3"]))

        def moved() -> bool:
            got = answers(40)
            return ("v2", SCORES["v3"]) in got and ("v2", SCORES["v2"]) not in got
        wait_for(moved, 2.0, "following the moved endpoint")
        wait_for(lambda: value(proc.metrics(), shadow, namespace=namespace, version="v3", result="agree") > 0, 5,
                 "mirrors to v3 once it has an endpoint", every=0.2)
    finally:
        proc.stop()


if __name__ == "__main__":
    serve_upstream()


def test_the_prediction_log_holds_each_sampled_answer_with_its_request_id(tmp, upstreams):
    import pyarrow.dataset as ds

    root = tmp / "predlog"
    config = {"name": "churn", "namespace": "ml",
              "routes": [route("v1", 100, "stable", upstreams["v1"].url),
                         route("v3", 0, "candidate", upstreams["v3"].url, shadow=100)],
              "predictionLog": {"uri": f"file://{root}", "sampleRate": 1.0, "flushSeconds": 0.5,
                                "entityKeys": ["plan"]}}
    proc = RouterProc(tmp, config, name="predlog")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        mine = send_many(proc.url, 10, headers={"x-request-id": "client-abc"}, concurrency=1)
        new = send_many(proc.url, 20)
        assert {r.status_code for r in mine + new} == {200}
        assert {r.headers["x-request-id"] for r in mine} == {"client-abc"}
        ids = {r.headers["x-request-id"] for r in new}
        assert len(ids) == 20 and "client-abc" not in ids  # one new id per request
        # 30 answers x 2 records, each once from the stable version and once from the shadow.
        wait_for(lambda: value(proc.metrics(), "mlcycle_router_prediction_log_rows_total", outcome="written")
                 == 120, 15, "120 logged rows written")
        rows = ds.dataset(root, format="parquet", partitioning="hive").to_table().to_pylist()
        assert len(rows) == 120 and {r["deployment"] for r in rows} == {"churn"}
        assert {(r["version"], r["role"], r["prediction"]) for r in rows} == {("v1", "stable", 0.30),
                                                                              ("v3", "shadow", 0.33)}
        assert {r["request_id"] for r in rows} == ids | {"client-abc"}
        assert sorted((r["row"], r["plan"], json.loads(r["features"])["tenure"]) for r in rows
                      if r["role"] == "stable" and r["request_id"] == next(iter(ids))) == [(0, "pro", 15),
                                                                                           (1, "gold", 35)]
        assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no partial file left behind
    finally:
        proc.stop()


def test_storage_that_is_down_costs_logged_rows_never_an_answer(tmp, upstreams):
    blocker = tmp / "not-a-directory"
    blocker.write_text("the log's directory cannot be made under a file")
    config = {"name": "churn", "namespace": "ml", "routes": [route("v1", 100, "stable", upstreams["v1"].url)],
              "predictionLog": {"uri": f"file://{blocker}/predictions", "sampleRate": 1.0, "flushSeconds": 0.2}}
    proc = RouterProc(tmp, config, name="predlog-down")
    try:
        proc.proc.wait_http(f"{proc.url}/readyz")
        for _ in range(3):
            assert {r.status_code for r in send_many(proc.url, 10)} == {200}
            time.sleep(0.3)
        wait_for(lambda: value(proc.metrics(), "mlcycle_router_prediction_log_rows_total", outcome="write_failed")
                 == 60, 10, "60 rows counted as write_failed")
        assert value(proc.metrics(), "mlcycle_router_prediction_log_rows_total", outcome="written") == 0
        assert proc.proc.log.read_text().count("cannot write to") == 1  # once per outage, with its cause
    finally:
        proc.stop()
