"""What only real containers show: a model trained and served in the runtime image as uid 65532 on a read-only
root, a trainer killed at its memory limit, and an image that does not exist — each in the resource's status
and an Event, in words."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from examples.churn import generate
from tests.cluster.conftest import ROOT, ROUTER_URL, KindHandle
from tests.harness import images
from tests.harness.loop import Traffic, records
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.cluster

RUNTIME = f"{images.PUBLIC_REPOSITORY}/runtime:{images.app_version()}"
# Under a name no registry can answer for: the pull is expected to fail, and the no-pull check is told so.
MISSING_IMAGE = f"{images.REGISTRY}/does-not-exist:0.0.0"
CLAIM = "churn-models"
DATA_URI = f"pvc://{CLAIM}/data/customers.parquet"


def apply(h: KindHandle, namespace: str, *docs: dict) -> None:
    h.kubectl("apply", "--server-side", "--field-manager=test", "-n", namespace, "-f", "-",
              input=yaml.safe_dump_all(docs))


def get(h: KindHandle, namespace: str, kind: str, name: str) -> dict:
    out = h.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def events(h: KindHandle, namespace: str, name: str) -> list[str]:
    out = json.loads(h.kubectl("get", "events", "-n", namespace, "--field-selector",
                               f"involvedObject.name={name}", "-o", "json").stdout)
    return [f"{e['type']} {e['reason']}: {e['message']}" for e in out["items"]]


def project(name: str = "churn") -> dict:
    return {
        "apiVersion": "mlcycle.io/v1alpha1", "kind": "MLProject", "metadata": {"name": name},
        "spec": {
            "objective": {"businessMetric": "churn rate", "metric": {"name": "roc_auc", "direction": "maximize"}},
            "owners": ["ml-platform@example.com"],
            # kind's local-path provisioner binds ReadWriteOnce only.
            "storage": {"uri": f"pvc://{CLAIM}/artifacts", "pvc": {"size": "1Gi", "accessMode": "ReadWriteOnce"}},
        },
    }


def training_job(name: str, memory: str = "2Gi") -> dict:
    return {
        "apiVersion": "mlcycle.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "labels": {"mlcycle.io/model": "churn-classifier"}},
        "spec": {
            "project": "churn",
            "data": {"source": {"uri": DATA_URI, "timestampColumn": "event_timestamp",
                                "entityColumns": ["customer_id"]},
                     "labelColumn": "churned", "split": {"validationFraction": 0.2, "testFraction": 0.1}},
            "model": {"framework": "xgboost", "params": {"objective": "binary:logistic", "tree_method": "hist",
                                                         "num_boost_round": 20}},
            "tuning": {"numSamples": 1, "metric": "roc_auc", "mode": "max"},
            "distribution": {"workers": 1, "cpuPerWorker": 0.5, "memoryPerWorker": memory},
            "evaluation": {"gates": {"minMetric": 0.6}},
            "output": {"modelName": "churn-classifier"},
        },
    }


def put_in_claim(h: KindHandle, namespace: str, files: dict[str, Path]) -> None:
    """Copy files into the project's claim through a pod that mounts it (as a user would with kubectl cp)."""
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loader"},
        "spec": {
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
            "containers": [{"name": "loader", "image": RUNTIME, "command": ["sleep", "600"],
                            "volumeMounts": [{"name": "claim", "mountPath": "/claim"}]}],
            "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": CLAIM}}],
        },
    }
    apply(h, namespace, pod)
    h.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/loader", "--timeout=120s")
    for remote, local in files.items():
        h.kubectl("exec", "-n", namespace, "loader", "--", "mkdir", "-p", str(Path("/claim") / Path(remote).parent))
        h.kubectl("cp", str(local), f"{namespace}/loader:/claim/{remote}")
    h.kubectl("delete", "pod", "-n", namespace, "loader", "--wait=false")


def churn_in_claim(h: KindHandle, namespace: str, tmp_path: Path, rows: int = 3000) -> str:
    """The project, and a small churn dataset in its claim."""
    apply(h, namespace, project())
    paths = generate.write(tmp_path, rows=rows, days=60)
    put_in_claim(h, namespace, {"data/customers.parquet": paths["customers"]})
    return namespace


@pytest.fixture
def churn(chart: KindHandle, kube_namespace: str, tmp_path: Path) -> str:
    return churn_in_claim(chart, kube_namespace, tmp_path)


EXAMPLE = ROOT / "examples" / "churn"


def readme_steps() -> list[list[str]]:
    """The commands of examples/churn/README.md's "In a cluster" block, one argv each."""
    text = (EXAMPLE / "README.md").read_text().split("### In a cluster", 1)[1]
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("  #", 1)[0]) for line in lines if line.strip()]


def example_project_on_kind(path: Path) -> Path:
    """01-mlproject.yaml with the one change the README asks of kind users: a ReadWriteOnce claim."""
    project = yaml.safe_load((EXAMPLE / "manifests" / "01-mlproject.yaml").read_text())
    project["spec"]["storage"]["pvc"]["accessMode"] = "ReadWriteOnce"
    path.write_text(yaml.safe_dump(project))
    return path


@pytest.fixture
def example(chart: KindHandle, kube_namespace: str, tmp_path: Path) -> str:
    """The example's project and data on its claim, by the README's commands run as written (the namespace,
    kubectl and python are this run's; the last command, which applies every manifest, is left to the test).
    First as shipped, with the default ReadWriteMany claim: kind's provisioner refuses it, and the MLProject says
    so and what to do; then done as it says."""
    ns, steps = kube_namespace, readme_steps()
    assert steps[0][:3] == ["kubectl", "create", "namespace"] and steps[-1][-1] == "examples/churn/manifests"

    def run(argv: list[str]) -> None:
        argv = [ns if a == "churn" else str(ROOT / a) if a.startswith("examples/") else
                a.replace("churn/churn-loader", f"{ns}/churn-loader").replace("/tmp/churn/data", str(tmp_path / "data"))
                for a in argv]
        if argv[0] == "kubectl":
            chart.kubectl(*argv[1:])
        else:
            assert argv[:3] == ["python", "-m", "examples.churn.generate"], argv
            subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, check=True)

    run(steps[1])  # 01-mlproject.yaml as shipped
    run(steps[3])  # the loader: the claim's first consumer
    status = wait_for(lambda: (s := get(chart, ns, "mlproject", "churn").get("status") or {}).get("phase")
                      == "Degraded" and s, timeout=120, what="the MLProject to say its claim cannot bind", every=2)
    ready = conditions({"status": status})["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "StorageNotBound", ready
    assert "ProvisioningFailed" in ready["message"] and "accessMode: ReadWriteOnce" in ready["message"], ready
    assert any("StorageNotBound" in e for e in events(chart, ns, "churn"))

    # As the message says: ReadWriteOnce, and the claim deleted, whose access mode cannot change.
    chart.kubectl("apply", "-n", ns, "-f", str(example_project_on_kind(tmp_path / "01-mlproject.yaml")))
    wait_for(lambda: conditions(get(chart, ns, "mlproject", "churn")).get("Degraded", {}).get("reason")
             == "StorageSpecImmutable", timeout=60, what="StorageSpecImmutable", every=2)
    chart.kubectl("delete", "pod", "-n", ns, "churn-loader", "--wait=false")
    chart.kubectl("delete", "pvc", "-n", ns, CLAIM, "--timeout=120s")
    wait_for(lambda: get(chart, ns, "pvc", CLAIM).get("spec", {}).get("accessModes") == ["ReadWriteOnce"],
             timeout=90, what="the operator to make the claim anew, ReadWriteOnce", every=2)
    chart.kubectl("wait", "-n", ns, "--for=delete", "pod/churn-loader", "--timeout=120s", check=False)
    for step in steps[2:-1]:  # the data, the loader, the copies, Feast's apply and materialize
        run(step)
    status = wait_for(lambda: (s := get(chart, ns, "mlproject", "churn").get("status") or {}).get("phase")
                      == "Ready" and s, timeout=60, what="the MLProject Ready with its claim bound", every=2)
    assert status["storage"]["phase"] == "Bound", status["storage"]
    return ns


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished(h: KindHandle, namespace: str, name: str, timeout: float = 420) -> dict:
    """The TrainingJob's status once it is Succeeded or Failed."""
    return wait_for(lambda: (s := get(h, namespace, "trainingjob", name).get("status") or {}).get("phase")
                    in ("Succeeded", "Failed") and s, timeout=timeout, what=f"TrainingJob {name} finished", every=3)


def train(h: KindHandle, namespace: str, name: str = "churn-v1") -> dict:
    apply(h, namespace, training_job(name))
    job = finished(h, namespace, name)
    assert job["phase"] == "Succeeded", json.dumps(job, indent=1)[:3000]
    return job


def test_the_example_trains_from_feast_and_serves_in_the_runtime_image_as_non_root_on_a_read_only_root(
        chart: KindHandle, example: str):
    """02-trainingjob.yaml as shipped (its feature service read from the registry and Parquet on the claim, its
    validation, gates and slices), with two trials instead of eight; then served and called through the router."""
    ns = example
    manifest = yaml.safe_load((EXAMPLE / "manifests" / "02-trainingjob.yaml").read_text())
    manifest["spec"]["tuning"]["numSamples"] = 2
    apply(chart, ns, manifest)
    job = finished(chart, ns, manifest["metadata"]["name"], timeout=600)
    assert job["phase"] == "Succeeded" and job["gatesPassed"] is True, json.dumps(job, indent=1)[:3000]
    assert {"customer_usage:monthly_charges", "customer_profile:tenure_months"} <= set(job["lineage"]["featureRefs"])
    apply(chart, ns, {
        "apiVersion": "mlcycle.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "churn"},
        "spec": {"project": "churn",
                 "model": {"name": "churn-classifier",
                           "track": {"selector": {"matchLabels": {"mlcycle.io/model": "churn-classifier"}}}},
                 "serving": {"replicas": 1, "resources": {"cpu": "250m", "memory": "512Mi"}},
                 "strategy": {"type": "Recreate"}},
    })
    md = wait_for(lambda: (s := get(chart, ns, "modeldeployment", "churn").get("status") or {}).get("phase")
                  == "Available" and s, timeout=300, what="ModelDeployment Available", every=3)
    assert md["stableVersion"] == job["model"]["version"]

    pods = json.loads(chart.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=model-server",
                                    "-o", "json").stdout)["items"]
    server = next(p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running")
    assert chart.kubectl("exec", "-n", ns, server, "--", "id", "-u").stdout.strip() == "65532"
    probe = chart.kubectl("exec", "-n", ns, server, "--", "python", "-c", "open('/opt/venv/x', 'w')", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr

    # Through the router's Service, as a client in the cluster would reach it.
    port = free_port()
    router = md["endpoint"].split("//", 1)[-1].split(".", 1)[0]
    forward = subprocess.Popen([str(chart.cluster.kubectl), "--kubeconfig", str(chart.kubeconfig), "port-forward",
                                "-n", ns, f"svc/{router}", f"{port}:80"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        rows = records(generate.generate(rows=20, days=10, seed=11))
        answer = wait_for(lambda: _predict(port, rows[0]), timeout=30, what="a prediction through the router")
        assert 0.0 <= answer["predictions"][0] <= 1.0, answer
        for row in rows[1:]:
            assert _predict(port, row) is not None
    finally:
        forward.terminate()
        forward.wait(10)


def _predict(port: int, row: dict) -> dict | None:
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": [row]}, timeout=10)
    except httpx.HTTPError:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def test_a_trainer_over_its_memory_limit_fails_the_job_in_words(chart: KindHandle, churn: str):
    ns = churn
    # Well under what the trainer's imports need: at 200Mi (under the limit by a little) the process thrashed on
    # evicted file pages for minutes instead of being killed, once the runtime carried Ray's dashboard packages.
    apply(chart, ns, training_job("churn-small", memory="128Mi"))
    job = finished(chart, ns, "churn-small", timeout=300)
    assert job["phase"] == "Failed", json.dumps(job, indent=1)[:2000]
    degraded = conditions({"status": job})["Degraded"]
    assert degraded["reason"] == "OOMKilled", degraded
    assert "128Mi" in degraded["message"] and "memoryPerWorker" in degraded["message"], degraded
    wait_for(lambda: any("OOMKilled" in e and "128Mi" in e for e in events(chart, ns, "churn-small")),
             timeout=30, what="an OOMKilled Event")


def test_an_image_that_does_not_exist_fails_the_deployment_in_words(chart: KindHandle, kube_namespace: str):
    ns = kube_namespace
    chart.expected_pulls.add(MISSING_IMAGE)
    apply(chart, ns, project(), {
        "apiVersion": "mlcycle.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "churn"},
        "spec": {"project": "churn",
                 "model": {"name": "churn-classifier", "uri": f"pvc://{CLAIM}/artifacts/churn/models/c/v1"},
                 "serving": {"image": MISSING_IMAGE, "replicas": 1, "resources": {"cpu": "100m", "memory": "256Mi"}},
                 "strategy": {"type": "Recreate"}},
    })

    def says_so() -> dict | None:
        ready = conditions(get(chart, ns, "modeldeployment", "churn")).get("Ready") or {}
        return ready if ready.get("reason") == "ImagePullFailed" else None

    ready = wait_for(says_so, timeout=150, what="Ready=False with reason ImagePullFailed", every=3)
    assert ready["status"] == "False" and MISSING_IMAGE in ready["message"], ready
    wait_for(lambda: any(e.startswith("Warning ImagePullFailed") and MISSING_IMAGE in e
                         for e in events(chart, ns, "churn")), timeout=30, what="an ImagePullFailed Event")
    assert get(chart, ns, "modeldeployment", "churn")["status"]["phase"] == "Degraded"


def test_a_version_scales_up_under_load_and_back_down_with_no_failed_request(chart: KindHandle, churn: str):
    """metrics-server feeds the version's HPA; clients call through the router's node port (localhost:8080)."""
    ns = churn
    train(chart, ns)
    apply(chart, ns, {
        "apiVersion": "mlcycle.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "churn"},
        "spec": {"project": "churn",
                 "model": {"name": "churn-classifier",
                           "track": {"selector": {"matchLabels": {"mlcycle.io/model": "churn-classifier"}}}},
                 "serving": {"resources": {"cpu": "100m", "memory": "512Mi"},
                             "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3,
                                             "targetCpuUtilization": 50, "scaleDownStabilization": "15s"}},
                 "service": {"type": "NodePort", "nodePort": 30080},
                 "strategy": {"type": "Recreate"}},
    })
    wait_for(lambda: (get(chart, ns, "modeldeployment", "churn").get("status") or {}).get("phase") == "Available",
             timeout=300, what="ModelDeployment Available", every=3)
    [hpa] = json.loads(chart.kubectl("get", "hpa", "-n", ns, "-o", "json").stdout)["items"]
    server = hpa["spec"]["scaleTargetRef"]["name"]

    def replicas() -> tuple[int, int]:
        status = get(chart, ns, "deployment", server).get("status") or {}
        return status.get("replicas", 0), status.get("readyReplicas", 0)

    rows = records(generate.generate(rows=400, days=10, seed=5))
    trickle = Traffic(url=ROUTER_URL, steady=rows, drifted=rows, rate=2.0, workers=4)
    load = Traffic(url=ROUTER_URL, steady=rows, drifted=rows, rate=40.0, workers=16)
    wait_for(lambda: _predict_url(ROUTER_URL, rows[0]), timeout=60, what="the router on localhost:8080")
    trickle.start()
    load.start()
    try:
        wait_for(lambda: replicas()[1] >= 2, timeout=300, every=3,
                 what=f"a second ready replica of {server} under load (HPA: {hpa['metadata']['name']})")
    finally:
        load.stop()
    try:
        wait_for(lambda: replicas() == (1, 1), timeout=300, every=3, what=f"{server} back to one replica")
    finally:
        trickle.stop()
    failures = load.failures + trickle.failures
    assert load.ok > 100 and trickle.ok > 10, (load.ok, trickle.ok)
    assert not failures, f"{len(failures)} of {load.sent + trickle.sent} requests failed: {failures[:5]}"
    events = json.loads(chart.kubectl("get", "events", "-n", ns, "--field-selector",
                                      f"involvedObject.name={hpa['metadata']['name']}", "-o", "json").stdout)
    reasons = [e["message"] for e in events["items"] if e["reason"] == "SuccessfulRescale"]
    assert any("above target" in m for m in reasons) and any("below target" in m for m in reasons), reasons


def _predict_url(url: str, row: dict) -> dict | None:
    try:
        r = httpx.post(f"{url}/predict", json={"records": [row]}, timeout=10)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None
