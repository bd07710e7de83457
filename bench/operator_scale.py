"""How the operator keeps up: apply N ModelDeployments (and N TrainingJobs) to the local control plane and
measure, per object, the time from its create call to the moment all of its children exist; the total time
until every child exists; and the operator's peak RSS.

Baseline, in the same run: the same children created directly by this process (no operator), which is what
the control plane itself costs. Prints figures; asserts nothing.

    .venv/bin/python bench/operator_scale.py --count 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3
import yaml
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcycle_operator.api.mlproject import MLProjectSpec  # noqa: E402
from mlcycle_operator.api.modeldeployment import ModelDeploymentSpec  # noqa: E402
from mlcycle_operator.config import Config  # noqa: E402
from mlcycle_operator.resources import serving  # noqa: E402
from mlcycle_operator.resources.common import Meta  # noqa: E402
from tests.harness import binaries  # noqa: E402
from tests.harness.cluster import LocalCluster  # noqa: E402
from tests.harness.operator_process import start_operator  # noqa: E402

NAMESPACE = "bench"
DESIRED = {"Deployment", "Service", "ConfigMap", "Job"}  # the kinds the operator creates for these objects


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Seen:
    """First time each child (kind/name) was seen, from watches on the bench namespace."""

    def __init__(self, api: client.ApiClient):
        self.times: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
        for kind, lister in (("Deployment", apps.list_namespaced_deployment),
                             ("Service", core.list_namespaced_service),
                             ("ConfigMap", core.list_namespaced_config_map),
                             ("Job", batch.list_namespaced_job)):
            threading.Thread(target=self._watch, args=(kind, lister), daemon=True).start()

    def _watch(self, kind: str, lister) -> None:
        """One watch resumed from the last resourceVersion, as raw JSON: restarting it from nothing would replay
        every object each time, and deserializing into client models cost this process most of a core (both
        loaded the machine the figures come from)."""
        version = None
        while not self.stop.is_set():
            try:
                for event in watch.Watch().stream(lister, NAMESPACE, timeout_seconds=30, resource_version=version,
                                                  allow_watch_bookmarks=True, deserialize=False):
                    meta = event["object"]["metadata"]
                    version = meta.get("resourceVersion") or version
                    if event["type"] == "ADDED":
                        with self.lock:
                            self.times.setdefault(f"{kind}/{meta['name']}", time.monotonic())
            except urllib3.exceptions.ProtocolError:  # the stream broke: the control plane stopping, or a timeout
                if self.stop.is_set():
                    return
            except (client.ApiException, KeyError) as err:
                # 410 Gone: the version expired; start over (ADDED again is harmless). The client reads an ERROR
                # event's `raw_object`, which raw JSON lacks: a KeyError is the same event.
                if isinstance(err, client.ApiException) and err.status != 410:
                    raise
                version = None

    def when(self, keys: list[str]) -> float | None:
        with self.lock:
            found = [self.times.get(k) for k in keys]
        return None if any(t is None for t in found) else max(found)


def md_children(name: str) -> list[str]:
    return [f"Deployment/{name}-v-v1", f"Service/{name}-v-v1", f"ConfigMap/{name}-v-v1",
            f"Deployment/{name}-router", f"Service/{name}", f"ConfigMap/{name}-router"]


def tj_children(name: str) -> list[str]:
    return [f"ConfigMap/{name}-train-config", f"Job/{name}-train"]


def model_deployment(name: str) -> dict:
    return {"apiVersion": "mlcycle.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"project": "bench", "model": {"name": "m", "version": "v1"},
                     "serving": {"replicas": 1, "resources": {"cpu": "100m", "memory": "128Mi"}}}}


def training_job(name: str) -> dict:
    return {"apiVersion": "mlcycle.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"project": "bench", "data": {"source": {"uri": "file:///data/x.parquet"}, "labelColumn": "y"},
                     "model": {"framework": "xgboost"}, "output": {"modelName": "m"}}}


PROJECT = {"apiVersion": "mlcycle.io/v1alpha1", "kind": "MLProject", "metadata": {"name": "bench"},
           "spec": {"objective": {"businessMetric": "bench", "metric": {"name": "auc"}}, "owners": ["b@x"],
                    "storage": {"uri": "file:///models"}}}
PLURAL = {"ModelDeployment": "modeldeployments", "TrainingJob": "trainingjobs"}


def run_kind(api: client.ApiClient, seen: Seen, kind: str, count: int, children, build, timeout: float) -> dict:
    objects = client.CustomObjectsApi(api)
    prefix = "md" if kind == "ModelDeployment" else "tj"
    created: dict[str, float] = {}

    def create(i: int) -> None:
        name = f"{prefix}{i:04d}"
        created[name] = time.monotonic()
        objects.create_namespaced_custom_object("mlcycle.io", "v1alpha1", NAMESPACE, PLURAL[kind], build(name))

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:  # like `kubectl apply -f dir/` from a CI job: a few requests at once
        list(pool.map(create, range(count)))
    applied = time.monotonic() - start
    deadline = start + timeout
    latencies: dict[str, float] = {}
    while len(latencies) < count and time.monotonic() < deadline:
        for name, t0 in created.items():
            if name not in latencies:
                done = seen.when(children(name))
                if done is not None:
                    latencies[name] = done - t0
        time.sleep(0.5)
    values = list(latencies.values())
    return {
        "kind": kind, "count": count, "apply_seconds": round(applied, 1),
        "all_children_seconds": round(max(created[n] + latencies[n] for n in latencies) - start, 1) if values else None,
        "complete": len(values), "p50_seconds": round(statistics.median(values), 2) if values else None,
        "p99_seconds": round(percentile(values, 0.99), 2) if values else None,
        "max_seconds": round(max(values), 2) if values else None,
    }


def steady(api: client.ApiClient, seen: Seen, count: int, gap: float) -> dict:
    """One ModelDeployment at a time, `gap` seconds apart: the latency a user sees on an idle operator."""
    objects = client.CustomObjectsApi(api)
    latencies = []
    for i in range(count):
        name = f"steady{i:03d}"
        t0 = time.monotonic()
        objects.create_namespaced_custom_object("mlcycle.io", "v1alpha1", NAMESPACE, "modeldeployments",
                                                model_deployment(name))
        while (done := seen.when(md_children(name))) is None and time.monotonic() - t0 < 60:
            time.sleep(0.02)
        if done is not None:
            latencies.append(done - t0)
        time.sleep(gap)
    return {"kind": "ModelDeployment, one at a time", "count": count, "complete": len(latencies),
            "p50_seconds": round(statistics.median(latencies), 3) if latencies else None,
            "p99_seconds": round(percentile(latencies, 0.99), 3) if latencies else None}


def operator_children(name: str) -> list[dict]:
    """The six children the operator makes for model_deployment(name), from its own builders."""
    spec = ModelDeploymentSpec.model_validate(model_deployment(name)["spec"])
    project = MLProjectSpec.model_validate(PROJECT["spec"])
    meta, image = Meta(name=name, namespace=NAMESPACE), Config().runtime_image
    return [*serving.children_for_version(spec, meta, "v1", "file:///models/bench/models/m/v1", project, image),
            serving.router_config_map(spec, meta, [], None), serving.router_deployment(spec, meta, project, image),
            serving.router_service(spec, meta)]


def baseline(api: client.ApiClient, count: int) -> dict:
    """The same six children per deployment, as the operator's builders make them, created directly by four
    threads: what the control plane itself costs."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    create = {"ConfigMap": core.create_namespaced_config_map, "Service": core.create_namespaced_service,
              "Deployment": apps.create_namespaced_deployment}
    latencies = []
    start = time.monotonic()

    def create_all(i: int) -> None:
        t0 = time.monotonic()
        for child in operator_children(f"base{i:04d}"):
            create[child["kind"]](NAMESPACE, child, _preload_content=False)
        latencies.append(time.monotonic() - t0)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(create_all, range(count)))
    return {"kind": "baseline: same children created directly", "count": count,
            "all_children_seconds": round(time.monotonic() - start, 1),
            "p50_seconds": round(statistics.median(latencies), 3), "p99_seconds": round(percentile(latencies, 0.99), 3)}


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
"""
CLIENTS = (("kopf/", "operator (Kopf)"), ("mlcycle-operator", "operator (mlcycle)"), ("mlcycle-bench", "bench"),
           ("kube-controller-manager", "controller-manager"), ("kube-scheduler", "scheduler"), ("kwok", "kwok"))


def new_cluster(audit: bool) -> LocalCluster:
    directory = Path(tempfile.mkdtemp(prefix="mlcycle-bench-"))
    extra = []
    if audit:
        (directory / "audit-policy.yaml").write_text(AUDIT_POLICY)
        extra = [f"--audit-policy-file={directory / 'audit-policy.yaml'}",
                 f"--audit-log-path={directory / 'audit.log'}", "--audit-log-format=json", "--audit-log-mode=batch"]
    cluster = LocalCluster(directory=directory, binaries=binaries.ensure_all(), nodes=4, gpu_nodes=0,
                           max_pods=2000, apiserver_args=extra)
    cluster.start()
    return cluster


def connect(cluster: LocalCluster) -> client.ApiClient:
    api = config.new_client_from_config(str(cluster.kubeconfig_path))
    api.user_agent = "mlcycle-bench"  # told apart from the operator in the audit log
    client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
    return api


class Writes:
    """The API server's audit log, read as it grows: every write, by client (user agent) and request."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def _client(self, agent: str) -> str:
        return next((name for prefix, name in CLIENTS if agent.startswith(prefix)), "other")

    def read(self) -> list[tuple[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            request = f"{event['verb']} {ref.get('resource', '?')}" + (f"/{ref['subresource']}"
                                                                       if ref.get("subresource") else "")
            out.append((self._client(event.get("userAgent", "")), request))
        return out

    def phase(self, kind: str, count: int, quiet: float = 15, limit: float = 180) -> dict:
        """Everything written since the last call, once the operator has written nothing for `quiet` seconds
        (readiness and status follow the children), per object of the phase."""
        events, last_write, start = [], time.monotonic(), time.monotonic()
        while time.monotonic() - last_write < quiet and time.monotonic() - start < limit:
            new = self.read()
            if any(who.startswith("operator") for who, _ in new):
                last_write = time.monotonic()
            events += new
            time.sleep(1)
        operator = Counter(f"{who.split()[-1].strip('()')}: {request}" for who, request in events
                           if who.startswith("operator"))
        others = Counter(who for who, _ in events if not who.startswith("operator"))
        return {"writes_of": kind, "count": count,
                "operator_writes_per_object": round(sum(operator.values()) / count, 2),
                "operator_by_request": {k: round(v / count, 2) for k, v in operator.most_common()},
                "others_per_object": {k: round(v / count, 2) for k, v in others.most_common()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--steady", type=int, default=20, help="deployments applied one at a time first")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--writes", action="store_true",
                        help="count every write per object from the API server's audit log (costs the API server "
                             "time: the timings of such a run are not the figures to report)")
    args = parser.parse_args()

    def report(result: dict) -> None:  # as soon as each figure exists: a long run may be cut short
        print(json.dumps(result), flush=True)

    if not args.no_baseline:
        # On a control plane of its own, stopped before the operator's starts: the pods of its thousands of
        # Deployments keep the controllers busy for minutes, which would load the operator's phase.
        cluster = new_cluster(audit=False)
        try:
            report(baseline(connect(cluster), args.count))
        finally:
            cluster.stop()
    cluster = new_cluster(audit=args.writes)
    print(f"[bench] {args.count} of each kind; cluster in {cluster.directory}", flush=True)
    operator = None
    writes = Writes(cluster.directory / "audit.log") if args.writes else None
    try:
        api = connect(cluster)
        ext = client.ApiextensionsV1Api(api)
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(crd.read_text()))
        time.sleep(2)
        seen = Seen(api)
        operator = start_operator(cluster, MLCYCLE_LOG_LEVEL="WARNING")
        idle_rss = rss_mib(operator.pid, "VmRSS")
        client.CustomObjectsApi(api).create_namespaced_custom_object("mlcycle.io", "v1alpha1", NAMESPACE,
                                                                     "mlprojects", PROJECT)
        report(steady(api, seen, args.steady, gap=0.5))
        if writes:  # the project's and the one-at-a-time deployments' writes: read past them, not counted
            writes.phase("setup", 1)
        report(run_kind(api, seen, "ModelDeployment", args.count, md_children, model_deployment, args.timeout))
        if writes:
            report(writes.phase("ModelDeployment", args.count))
        report({"operator_rss_mib": {"now": round(rss_mib(operator.pid, "VmRSS"), 1),
                                     "peak": round(rss_mib(operator.pid, "VmHWM"), 1)},
                "objects": args.count + args.steady + 1, "idle_before": round(idle_rss, 1)})
        report(run_kind(api, seen, "TrainingJob", args.count, tj_children, training_job, args.timeout))
        if writes:
            report(writes.phase("TrainingJob", args.count))
        time.sleep(10)  # the operator keeps reconciling (timers): let RSS settle at its working size
        report({"operator_rss_mib": {"now": round(rss_mib(operator.pid, "VmRSS"), 1),
                                     "peak": round(rss_mib(operator.pid, "VmHWM"), 1)},
                "objects": 2 * args.count + args.steady + 1})
        seen.stop.set()
        print(f"\ntargets (DESIGN.md): apply -> children p50 <= 1 s; {args.count} ModelDeployments within 60 s; "
              "RSS <= 200 MB with 1,000 resources")
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:  # still draining a backlog: the figures are printed already
                operator.kill()
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
