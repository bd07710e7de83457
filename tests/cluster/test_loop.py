"""The closed loop in containers, kept in sync the way GitOps keeps it: the churn example's manifests (tuned as
tests/harness/kind_loop.py names: RWO claim, NodePort, short windows, one to three servers a version) are applied
with server-side apply under a field manager of their own and re-applied every 5 s for the whole run, as Argo CD
or Flux would. v1 trains in the runtime image on a kind worker; it is served by BentoML pods (adaptive batching,
an HPA fed by metrics-server) behind the router, which clients call on localhost:8080 (the router's NodePort);
the monitor pod finds drift on live traffic through the chart's Prometheus and starts one retraining; v2 is
promoted through a canary, a bad v3 rolled back. Every client request is counted and none fails, no re-apply is
refused, and at the end `kubectl diff --server-side` of the manifests is empty: the loop needed no second apply,
was not disturbed by one, and the operator wrote no field the user owns."""

from __future__ import annotations

import json

import pytest
from kubernetes import config

from tests import loop_checks as checks
from tests.cluster.conftest import ROUTER_URL, KindHandle, _log
from tests.harness import kind_loop
from tests.harness.gitops import MANAGER, GitOps
from tests.harness.loop import MODEL, ClosedLoop
from tests.integration.helpers import Mlcycle, wait_for

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(2400)
def test_the_closed_loop_in_containers_under_gitops(chart: KindHandle, kube_namespace: str,
                                                    request: pytest.FixtureRequest):
    namespace, say = kube_namespace, _log(request)
    ml = Mlcycle(config.new_client_from_config(str(chart.kubeconfig)), namespace)
    gitops = GitOps(lambda *args, input=None: chart.kubectl(*args, check=False, input=input), namespace)
    loop = ClosedLoop(ml, None, say=lambda m: say(f"[loop] {m}"),
                      put=kind_loop.ClaimWriter(chart.cluster, namespace, chart.project.runtime),
                      logs=lambda pod: chart.kubectl("logs", "-n", namespace, pod, "--tail=20", check=False).stdout,
                      router_url=ROUTER_URL, spec=kind_loop.manifests(), create=gitops.add)
    gitops.start()
    try:
        loop.start()
        _first_model_in_a_container(loop, chart, namespace)
        checks.served(loop)
        _serving_as_shipped(chart, namespace)
        checks.drift_starts_one_retraining(loop, ml)
        checks.promoted(loop)
        checks.rolled_back(loop, ml)
    finally:
        gitops.stop()
        loop.finish()
        say("[loop] as it happened:\n" + loop.summary())
    checks.every_request_answered(loop, minimum=1000)
    assert gitops.failures == [], gitops.failures[:5]
    assert gitops.applies >= 30, f"only {gitops.applies} re-applies during the loop"
    assert gitops.diff() == "", "a sync would change what the loop left:\n" + gitops.diff()
    # The user's fields are the GitOps manager's alone: the operator never took one over.
    for kind, manifest in loop.spec.items():
        managed = json.loads(chart.kubectl("get", kind.lower(), manifest["metadata"]["name"], "-n", namespace,
                                           "-o", "json", "--show-managed-fields").stdout)["metadata"]["managedFields"]
        spec_writers = {m["manager"] for m in managed if "f:spec" in (m.get("fieldsV1") or {})}
        assert spec_writers == {MANAGER}, f"{kind}'s spec written by {spec_writers}"


def _first_model_in_a_container(loop: ClosedLoop, h: KindHandle, namespace: str) -> None:
    status = loop.first_model()
    model = status["model"]
    assert model["name"] == MODEL and status["gatesPassed"] is True and status["trials"]["finished"] == 2
    pods = json.loads(h.kubectl("get", "pods", "-n", namespace, "-l", "job-name", "-o", "json").stdout)["items"]
    assert pods, "no training pod"
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith(f"{h.cluster.name}-worker"), pod["spec"]["nodeName"]
        container = pod["spec"]["containers"][0]
        assert container["image"] == h.project.runtime
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    version = f"/mnt/pvc/churn-models/artifacts/churn/models/{MODEL}/{model['version']}"
    listing = h.kubectl("exec", "-n", namespace, "churn-loader", "--", "ls", version).stdout.split()
    assert {"model.json", "reference.json", "_COMPLETE"} <= set(listing), listing


def _serving_as_shipped(h: KindHandle, namespace: str) -> None:
    """Adaptive batching on, and an HPA per version that metrics-server feeds: it can scale (ScalingActive True,
    once metrics-server has scraped the new pods), and the ModelDeployment does not say otherwise."""
    md = json.loads(h.kubectl("get", "modeldeployment", "churn", "-n", namespace, "-o", "json").stdout)
    assert md["spec"]["serving"]["batching"]["enabled"] is True

    def scaling() -> list[dict] | None:
        hpas = json.loads(h.kubectl("get", "hpa", "-n", namespace, "-o", "json").stdout)["items"]
        active = [c for hpa in hpas for c in (hpa.get("status") or {}).get("conditions") or []
                  if c["type"] == "ScalingActive"]
        return hpas if hpas and active and all(c["status"] == "True" for c in active) else None

    wait_for(scaling, timeout=180, what="the version's autoscaler fed by metrics-server (ScalingActive True)")
    conditions = {c["type"]: c for c in json.loads(h.kubectl("get", "modeldeployment", "churn", "-n", namespace,
                                                              "-o", "json").stdout)["status"]["conditions"]}
    assert conditions["Degraded"].get("reason") != "AutoscalingInactive", conditions["Degraded"]
