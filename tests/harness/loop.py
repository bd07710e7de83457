"""The churn example's closed loop, driven on a cluster whose pods run for real (the process node): the scenario
tests/e2e asserts and `make demo` narrates.

    v1 trains and passes its gates -> it is served behind the router -> steady traffic flows -> fresh data arrives
    and live traffic drifts -> the DriftMonitor reports drift and starts one retraining -> v2 trains on the fresh
    data -> canary analysed on Prometheus -> promoted -> a bad v3 (good offline, slow in serving) -> rolled back

Every step is read from the resources' status and Events; nothing here decides anything the operator should.
The manifests are the example's (examples/churn/manifests) with what a loop of minutes instead of days needs:
short windows, pauses and intervals, one replica, and training data read as Parquet from the project's claim
(Feast at training and serving time is covered by the runtime tier, tests/integration/runtime).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from kubernetes import client

from examples.churn.generate import CATEGORICAL, NUMERIC, Drift, generate
from tests.integration.helpers import EXAMPLES, Mlcycle

# The data: four months of history, then a month in which two features moved and their relation to churn changed.
HISTORY = {"rows": 6000, "start": "2026-01-01", "days": 120, "seed": 7}
SHIFTED = ("monthly_charges", "data_usage_gb")
RECENT = {"rows": 6000, "start": "2026-05-01", "days": 30, "seed": 8,
          "drift": Drift(start="2026-05-01", covariate=dict.fromkeys(SHIFTED, 1.5), concept=1.5)}
DATA_URI = "pvc://churn-models/data/customers"  # a directory: every Parquet file in it is read
MODEL = "churn-classifier"
FAILURE_LIMIT, INTERVAL_S = 3, 10
# The bad v3 is slow to serve: a forest of 3,000 trees walks them one by one in Python (about 120 ms a row on
# these machines, 40 times XGBoost's). Judged against a fixed threshold, that verdict moved with the CPU: an idle
# machine answered within 0.3 s and promoted v3. Judged against the stable version's p99 in the same window, the
# same ratio holds on any machine: the canary may be at most 5 times slower than what it would replace.
LATENCY_METRIC = "p99-latency-vs-stable"
_P99 = ("histogram_quantile(0.99, sum by (le) (rate(mlcycle_router_request_duration_seconds_bucket"
        '{{namespace="{{{{namespace}}}}",deployment="{{{{deployment}}}}",version{op}"{{{{version}}}}"}}'
        f"[{INTERVAL_S}s])))")
LATENCY_VS_STABLE = f"{_P99.format(op='=')} / {_P99.format(op='!=')}"
WINDOW_S, SCHEDULE_S = 60, 10


class LoopError(RuntimeError):
    """A step of the loop did not happen; the message says which, and what the resources said instead."""


def manifests() -> dict[str, dict[str, Any]]:
    """The example manifests, tuned to run the loop in minutes on two cores."""
    project = copy.deepcopy(EXAMPLES["MLProject"])
    project["spec"].pop("featureStore", None)

    job = copy.deepcopy(EXAMPLES["TrainingJob"])
    job["spec"]["data"]["source"]["uri"] = DATA_URI
    job["spec"]["data"].pop("featureService", None)
    job["spec"]["tuning"].update(numSamples=2, maxConcurrentTrials=1)
    job["spec"]["model"]["params"]["num_boost_round"] = 30
    job["spec"]["evaluation"]["gates"].update(minMetric=0.65, minLiftOverChampion=0.0)

    deployment = copy.deepcopy(EXAMPLES["ModelDeployment"])
    deployment["spec"]["serving"].update(replicas=1, autoscaling={"enabled": False}, batching={"enabled": False})
    deployment["spec"]["strategy"] = {"type": "Canary", "scaleDownDelay": "30s", "canary": {
        "steps": [{"weight": 25, "pause": "20s"}, {"weight": 60, "pause": "10s"}],
        "analysis": {"interval": f"{INTERVAL_S}s", "failureLimit": FAILURE_LIMIT, "metrics": [
            {"name": "error-rate", "type": "errorRate", "threshold": 0.05},
            {"name": LATENCY_METRIC, "type": "promql", "query": LATENCY_VS_STABLE, "threshold": 5}]}}}

    monitor = copy.deepcopy(EXAMPLES["DriftMonitor"])
    # PSI for both kinds: a chi-squared p-value under 0.01 turns up by chance in one report out of a hundred.
    monitor["spec"].update(window=f"{WINDOW_S}s", schedule=f"{SCHEDULE_S}s", minSamples=200, tests={
        "numeric": {"method": "psi", "threshold": 0.2}, "categorical": {"method": "psi", "threshold": 0.2}})
    monitor["spec"]["actions"]["retrain"].update(cooldown="1h", maxPerDay=2)
    return {"MLProject": project, "TrainingJob": job, "ModelDeployment": deployment, "DriftMonitor": monitor}


def bad_job(name: str = "churn-v3") -> dict[str, Any]:
    """A model that passes its offline gates and is too slow to serve: 3,000 trees walked one by one in Python
    (scikit-learn's forest) answer one row in a few hundred milliseconds, the XGBoost ones in a few."""
    job = copy.deepcopy(manifests()["TrainingJob"])
    job["metadata"]["name"] = name
    job["spec"]["model"] = {"framework": "sklearn", "estimator": "sklearn.ensemble.RandomForestClassifier",
                            "params": {"n_estimators": 3000, "max_depth": 6, "random_state": 0}}
    job["spec"]["tuning"] = {"numSamples": 1, "metric": "roc_auc", "mode": "max"}
    job["spec"]["evaluation"]["gates"] = {"minMetric": 0.65}
    return job


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Request records (features only) from generated rows; rows with a missing value are left out (JSON has no
    NaN, and a record the server refuses would count as a failed request)."""
    rows = frame[[*NUMERIC, *CATEGORICAL]].dropna()
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows.to_dict("records")]


@dataclass
class Traffic:
    """Clients at a steady rate through the router, from a pool so a slow version does not slow the rate; every
    request counted, every failure kept with its time and reason."""

    url: str
    steady: list[dict[str, Any]]
    drifted: list[dict[str, Any]]
    rate: float = 8.0
    workers: int = 8
    drift: bool = False
    sent: int = 0
    ok: int = 0
    versions: Counter = field(default_factory=Counter)
    failures: list[tuple[float, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="traffic")
        self._local = threading.local()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=True)

    def failed_since(self, since: float) -> list[tuple[float, str]]:
        with self._lock:
            return [f for f in self.failures if f[0] >= since]

    def _run(self) -> None:
        period, i = 1.0 / self.rate, 0
        start = time.monotonic()
        while not self._stop.is_set():
            source = self.drifted if self.drift else self.steady
            self._pool.submit(self._one, source[i % len(source)])
            i += 1
            self._stop.wait(max(0.0, start + i * period - time.monotonic()))

    def _one(self, record: dict[str, Any]) -> None:
        http = getattr(self._local, "client", None)
        if http is None:
            http = self._local.client = httpx.Client(timeout=30)
        with self._lock:
            self.sent += 1
        try:
            answer = http.post(f"{self.url}/predict", json={"records": [record]})
            problem = None if answer.status_code == 200 else f"HTTP {answer.status_code}: {answer.text[:200]}"
        except httpx.HTTPError as err:
            problem, answer = f"{type(err).__name__}: {err}", None
        with self._lock:
            if problem is None:
                self.ok += 1
                self.versions[answer.headers.get("x-mlcycle-variant", "?")] += 1
            else:
                self.failures.append((time.monotonic(), problem))


class ClosedLoop:
    """One run of the loop in `ml`'s namespace. Where pods run as host processes, `claim_dir` is the host
    directory bound to the churn-models claim; on a real cluster, `put` writes a file into the claim (path in the
    claim, frame) and `router_url` is where clients reach the router from here, and `spec` the manifests.
    Without `router_url`, clients call the router pod at `pod_address(podIP)` (the process node: its loopback
    forward of the pod's address, tests/harness/netns.py).
    `create` submits the four manifests (default: a plain create; tests/harness/gitops.py applies them as GitOps
    would)."""

    def __init__(self, ml: Mlcycle, claim_dir: Path | None, logs: Callable[[str], str] | None = None,
                 say: Callable[[str], None] = lambda _: None,
                 put: Callable[[str, pd.DataFrame], None] | None = None, router_url: str | None = None,
                 spec: dict[str, dict[str, Any]] | None = None,
                 create: Callable[[dict[str, Any]], Any] | None = None,
                 pod_address: Callable[[str], str] = lambda ip: ip):
        self.ml, self.claim_dir, self.say = ml, claim_dir, say
        self.logs = logs  # pod name -> its logs, for explanations
        self.put, self.router_url, self.pod_address = put, router_url, pod_address
        self.spec = spec or manifests()
        self.create = create or ml.create
        self.phases: dict[str, float] = {}  # name -> seconds
        self.facts: dict[str, Any] = {}
        self.traffic: Traffic | None = None
        self._frames = {"history": generate(**HISTORY), "recent": generate(**RECENT)}

    # -- the steps -------------------------------------------------------------------------------------------
    def start(self) -> None:
        # The project first: on a real cluster it is what creates the claim the data goes into.
        for kind in ("MLProject", "TrainingJob", "ModelDeployment", "DriftMonitor"):
            if kind == "TrainingJob":
                self._write_partition("history")
            self.create(self.spec[kind])
            self.say(f"created {kind} {self.spec[kind]['metadata']['name']}")
        self._t0 = time.monotonic()

    def first_model(self) -> dict[str, Any]:
        job = self.spec["TrainingJob"]["metadata"]["name"]
        status = self._job_done(job, 600)
        self.phases["train v1"] = time.monotonic() - self._t0
        self.facts["v1"] = status
        return status

    def serve(self) -> dict[str, Any]:
        version = self.facts["v1"]["model"]["version"]
        begin = time.monotonic()
        md = self.wait(lambda: self._md_if(lambda s: s.get("phase") == "Available" and s.get("stableVersion") ==
                                           version), 300, f"ModelDeployment churn to serve {version}")
        router = self.wait(self._router_pod, 120, "a ready router pod")
        self.phases["serve v1"] = time.monotonic() - begin
        self.url = self.router_url or f"http://{self.pod_address(router.status.pod_ip)}:8080"
        steady = records(self._frames["history"].tail(3000))
        if self.router_url:
            # A node port answers only once kube-proxy has programmed it, a few seconds after the Service exists:
            # until then the endpoint clients are given does not exist yet, and nothing is counted.
            self.wait(lambda: self._answers(steady[0]), 120, f"the router's node port to answer on {self.url}")
        self.traffic = Traffic(self.url, steady, records(self._frames["recent"]))
        self.traffic.start()
        self.facts["steady started"] = pd.Timestamp.now(tz="UTC")
        self.say(f"steady traffic through the router at {self.url}, {self.traffic.rate:.0f} requests/s")
        return md

    def drift(self, steady_seconds: float = 45.0) -> dict[str, Any]:
        """Steady traffic for a while (no drift must be found), then fresh data lands and traffic drifts."""
        # Not a sleep: a report the monitor made at least steady_seconds into the steady traffic.
        since = self.facts["steady started"] + pd.Timedelta(seconds=steady_seconds)
        quiet = self.wait(lambda: self._if(self.ml.status("DriftMonitor", "churn"), lambda s: pd.Timestamp(
                              (s.get("lastReport") or {}).get("time") or "1970-01-01T00:00:00Z") >= since),
                          steady_seconds + 300, f"a DriftMonitor report {steady_seconds:.0f}s into steady traffic")
        self.facts["before drift"] = quiet
        self._write_partition("recent")
        assert self.traffic is not None
        self.traffic.drift = True
        begin = time.monotonic()
        self.facts["drift started"] = pd.Timestamp.now(tz="UTC")
        self.say("fresh data written to the claim; live traffic now drifts on " + ", ".join(SHIFTED))
        status = self.wait(lambda: self._if(self.ml.status("DriftMonitor", "churn"),
                                            lambda s: (s.get("lastRetrain") or {}).get("trainingJob")),
                           300, "the DriftMonitor to start a retraining")
        self.phases["detect drift"] = time.monotonic() - begin
        self.facts["drift"] = status
        self.say(f"drift found on {', '.join(status['lastReport']['driftedFeatures'])}: "
                 f"{status['lastRetrain']['trainingJob']} started")
        # The first drifted report is of a window still part steady; one of drifted traffic only comes later: a
        # report made a window (and a schedule, for the scrape) after the drift started.
        drifted_only = self.facts["drift started"] + pd.Timedelta(seconds=WINDOW_S + SCHEDULE_S)
        later = self.wait(lambda: self._if(self.ml.status("DriftMonitor", "churn"), lambda s: pd.Timestamp(
                              s["lastReport"]["time"]) >= drifted_only), WINDOW_S + 300,
                          "a DriftMonitor report of a window of drifted traffic only")
        self.facts["drifted window"] = later["lastReport"]
        return status

    def retrain_and_promote(self) -> dict[str, Any]:
        job = self.facts["drift"]["lastRetrain"]["trainingJob"]
        status = self._job_done(job, 600)
        # It trained while drift went on (maybe finished already): its own timestamps say how long it took.
        self.phases["retrain v2"] = self._trained_seconds(job)
        self.facts["v2"] = status
        return self._rollout(status["model"]["version"], "Promoted", "promote v2")

    def bad_model(self) -> dict[str, Any]:
        job = bad_job()
        self.ml.create(job)
        self.say(f"created TrainingJob {job['metadata']['name']}: a forest of 3,000 trees, good offline, slow online")
        begin = time.monotonic()
        status = self._job_done(job["metadata"]["name"], 600)
        self.phases["train v3"] = time.monotonic() - begin
        self.facts["v3"] = status
        return self._rollout(status["model"]["version"], "RolledBack", "roll back v3")

    def summary(self) -> str:
        """The story in a few lines: which versions, when, why (drift scores, gate results, analysis verdicts)."""
        lines = []

        def job(key: str, label: str) -> None:
            status = self.facts.get(key)
            if not status:
                return
            gates = ", ".join(f"{g['name']} {'passed' if g.get('passed') else 'FAILED'}"
                              for g in status.get("gates") or [])
            lines.append(f"{label} {status['model']['version']}: roc_auc {status['metrics'].get('roc_auc', 0):.3f}"
                         f" on {sum((status.get('lineage') or {}).get('rows', {}).values())} rows; gates: {gates}")

        job("v1", "v1")
        if "v1" in self.facts and "serve v1" in self.phases:
            lines.append("   served behind the router, 100% of traffic")
        drift = self.facts.get("drift")
        if drift:
            scores = ", ".join(f"{f['name']} {f['method']} {f['score']:.2f} > {f['threshold']}"
                               for f in drift["lastReport"].get("features") or [] if f.get("drifted"))
            lines.append(f"drift at {drift['lastReport']['time']}: {scores}")
            retrain = drift["lastRetrain"]
            lines.append(f"   retraining {retrain['trainingJob']} started: {retrain['reason']}")
        for key, label, phase in (("v2", "v2", "promote v2"), ("v3", "v3 (bad)", "roll back v3")):
            job(key, label)
            done = self.facts.get(phase)
            if done:
                verdicts = Counter(r["verdict"] for r in done["runs"])
                lines.append(f"   canary analysis: {dict(verdicts)} -> {done['entry']['outcome']} at "
                             f"{done['entry']['time']}: {done['entry'].get('reason', '')}")
        lines.append("wall time per phase: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.phases.items()))
        if self.traffic is not None:
            t = self.traffic
            in_flight = t.sent - t.ok - len(t.failures)
            lines.append(f"client requests: {t.sent} sent, {t.ok} answered, {len(t.failures)} failed"
                         f"{f', {in_flight} in flight' if in_flight else ''}; answered by {dict(t.versions)}")
        return "\n".join(lines)

    def finish(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()

    # -- reading the resources -------------------------------------------------------------------------------
    def _rollout(self, version: str, outcome: str, phase: str) -> dict[str, Any]:
        """Follow the ModelDeployment from the candidate's first traffic to the outcome; keep every analysis run."""
        runs: dict[str, dict[str, Any]] = {}
        started: list[float] = []

        def ended() -> dict[str, Any] | None:
            md = self.ml.status("ModelDeployment", "churn")
            rollout = md.get("rollout") or {}
            if rollout.get("candidateVersion") == version:
                for run in rollout.get("analysisRuns") or []:
                    runs.setdefault(run["time"], run)
                if not started and any(t["version"] == version and t["weight"] > 0 for t in md.get("traffic") or []):
                    started.append(time.monotonic())
                    self.say(f"{version} is the canary: {md.get('trafficSummary')}")
            last = (md.get("history") or [{}])[-1]
            return md if last.get("version") == version and last.get("outcome") else None

        md = self.wait(ended, 600, f"the rollout of {version} to end ({outcome} expected)")
        self.phases[phase] = time.monotonic() - (started[0] if started else time.monotonic())
        entry = md["history"][-1]
        for run in entry.get("analysisRuns") or []:  # the deciding run is only there: the rollout left status
            runs.setdefault(run["time"], run)
        self.facts[phase] = {"status": md, "runs": [runs[k] for k in sorted(runs)], "entry": entry,
                             "since": started[0] if started else None}
        self.say(f"{version}: {entry['outcome']} — {entry.get('reason', '')}")
        if entry["outcome"] != outcome:
            raise LoopError(f"{version} was {entry['outcome']}, not {outcome}: {entry.get('reason')}\n"
                            + self.explain())
        return md

    def _job_done(self, name: str, timeout: float) -> dict[str, Any]:
        self.say(f"waiting for TrainingJob {name} to train")
        status = self.wait(lambda: self._if(self.ml.status("TrainingJob", name),
                                            lambda s: s.get("phase") in ("Succeeded", "Failed")),
                           timeout, f"TrainingJob {name} to finish")
        if status["phase"] != "Succeeded" or not status.get("gatesPassed"):
            raise LoopError(f"TrainingJob {name} ended {status['phase']} (gates passed: {status.get('gatesPassed')}):"
                            f" {status.get('conditions')}\n" + self.explain())
        self.say(f"TrainingJob {name}: {status['model']['version']}, "
                 f"{status.get('metrics', {}).get('roc_auc', float('nan')):.3f} roc_auc, gates passed")
        return status

    def _trained_seconds(self, name: str) -> float:
        job = self.ml.get("TrainingJob", name)
        created = pd.Timestamp(job["metadata"]["creationTimestamp"])
        done = (job.get("status") or {}).get("completionTime")
        return (pd.Timestamp(done) - created).total_seconds() if done else float("nan")

    def _answers(self, record: dict[str, Any]) -> bool:
        try:
            return httpx.post(f"{self.url}/predict", json={"records": [record]}, timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def _md_if(self, predicate) -> dict[str, Any] | None:
        return self._if(self.ml.status("ModelDeployment", "churn"), predicate)

    @staticmethod
    def _if(status: dict[str, Any], predicate) -> dict[str, Any] | None:
        return status if predicate(status) else None

    def _router_pod(self):
        pods = self.ml.core.list_namespaced_pod(self.ml.namespace,
                                                label_selector="app.kubernetes.io/component=router").items
        return next((p for p in pods if p.status.pod_ip and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])), None)

    def _write_partition(self, name: str) -> None:
        """New data lands the way it does in a data lake: a new file in the directory the jobs read."""
        if self.put is not None:
            self.put(f"data/customers/{name}.parquet", self._frames[name])
            return
        assert self.claim_dir is not None
        directory = self.claim_dir / "data" / "customers"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.parquet.tmp"
        self._frames[name].to_parquet(tmp, index=False)
        tmp.rename(directory / f"{name}.parquet")  # readers never see half a file

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            time.sleep(1.0)
        raise LoopError(f"timed out after {timeout:.0f}s waiting for {what}\n" + self.explain())

    def explain(self) -> str:
        """What every resource and pod says now: the text a person would read to see where the loop stopped."""
        lines = []
        for kind in ("TrainingJob", "ModelDeployment", "DriftMonitor"):
            for obj in self.ml.list(kind):
                status = obj.get("status") or {}
                conditions = "; ".join(f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message')}"
                                       for c in status.get("conditions") or [])
                lines.append(f"{kind} {obj['metadata']['name']}: phase={status.get('phase')} {conditions}")
        try:
            pods = self.ml.core.list_namespaced_pod(self.ml.namespace).items
        except client.ApiException as err:
            pods, lines = [], [*lines, f"(pods not listed: {err.reason})"]
        for pod in pods:
            lines.append(f"pod {pod.metadata.name}: {pod.status.phase} on {pod.spec.node_name}")
            if self.logs is not None and pod.status.phase in ("Failed", "Running"):
                tail = self.logs(pod.metadata.name).strip().splitlines()[-8:]
                lines.extend(f"    {line}" for line in tail)
        if self.traffic is not None:
            lines.append(f"traffic: {self.traffic.sent} sent, {self.traffic.ok} ok, "
                         f"{len(self.traffic.failures)} failed {self.traffic.failures[-3:]}")
        return "\n".join(lines)
