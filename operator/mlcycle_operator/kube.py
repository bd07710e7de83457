"""The only module that talks to the API server (besides Kopf itself): get, list, apply, delete, status.

Manifests are plain dicts from the pure builders in resources/. Applying compares desired with existing
(resources.compare) and writes only when something we own differs, with server-side apply so fields
that others set (HPA-managed replicas, defaults) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .config import HANDLER_THREADS
from .resources.compare import Action, action_for

log = logging.getLogger(__name__)
FIELD_MANAGER = "mlcycle-operator"

# kind -> plural, for every kind the operator reads or writes.
PLURALS = {
    "ConfigMap": "configmaps", "Service": "services", "ServiceAccount": "serviceaccounts",
    "PersistentVolumeClaim": "persistentvolumeclaims", "Pod": "pods", "Event": "events",
    "Role": "roles", "RoleBinding": "rolebindings",
    "Deployment": "deployments", "Job": "jobs", "CronJob": "cronjobs",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers", "PodDisruptionBudget": "poddisruptionbudgets",
    "RayJob": "rayjobs", "NetworkPolicy": "networkpolicies", "ServiceMonitor": "servicemonitors",
    "PrometheusRule": "prometheusrules",
    "MLProject": "mlprojects", "TrainingJob": "trainingjobs", "ModelDeployment": "modeldeployments",
    "DriftMonitor": "driftmonitors", "BatchPrediction": "batchpredictions",
}

# "Not known here, ask the API server": what a cache answers for a kind it does not keep (None means absent).
UNKNOWN: Any = object()

USER_AGENT = "mlcycle-operator"
_lock = threading.Lock()
_client: client.ApiClient | None = None
_discovery: dict[str, tuple[float, bool]] = {}
DISCOVERY_TTL = 60.0


def api_client() -> client.ApiClient:
    """One shared client: in-cluster config inside a pod, else $KUBECONFIG."""
    global _client
    with _lock:
        if _client is None:
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
            # A connection per thread that calls: Kopf's handler threads and asyncio's default executor (the
            # nudges). With the default (5 per CPU), threads beyond it opened and dropped a TLS connection per
            # request.
            configuration.connection_pool_maxsize = HANDLER_THREADS + min(32, (os.cpu_count() or 1) + 4)
            _client = client.ApiClient(configuration)
            # Named in the API server's audit log and metrics (Kopf's own requests say "kopf/<version>").
            _client.user_agent = USER_AGENT
        return _client


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(PLURALS[kind])
    if name:
        parts.append(name)
    if sub:
        parts.append(sub)
    return "/".join(parts)


def _call(method: str, url: str, body: Any = None, query: list[tuple[str, Any]] | None = None,
          content_type: str = "application/json") -> Any:
    """One request; JSON in and out; ApiException for any status outside 2xx."""
    api = api_client()
    method, full_url, headers, body, post = api.param_serialize(
        method, url, query_params=query or [], body=body,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, full_url, headers, body, post, _request_timeout=(10, 60))
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(http_resp=response)
    return json.loads(data) if data else None


def get(api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    try:
        return _call("GET", path(api_version, kind, namespace, name))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def list_objects(api_version: str, kind: str, namespace: str | None, label_selector: str | None = None,
                 field_selector: str | None = None) -> list[dict[str, Any]]:
    query = [("labelSelector", label_selector)] if label_selector else []
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return _call("GET", path(api_version, kind, namespace), query=query).get("items", [])


# Every create and apply asks the API server to refuse a field its schema lacks, instead of dropping it in silence:
# an older CRD (KubeRay's RayJob, the Prometheus Operator's kinds) would otherwise lose a deadline or a setting.
STRICT = ("fieldValidation", "Strict")


def refusal(err: ApiException) -> str:
    """The API server's own words for a refused request (its Status message), else the HTTP reason."""
    try:
        return json.loads(err.body).get("message") or str(err.reason)
    except (TypeError, ValueError, AttributeError):
        return str(err.reason)


def apply(manifest: dict[str, Any], existing: dict[str, Any] | Any | None = UNKNOWN) -> Action:
    """Create or update one object; returns what was done. `existing` is the object as a cache last saw it
    (None: absent), so that a reconcile that changes nothing sends nothing; UNKNOWN reads it first."""
    meta = manifest["metadata"]
    api_version, kind, namespace = manifest["apiVersion"], manifest["kind"], meta.get("namespace")
    if existing is UNKNOWN:
        existing = get(api_version, kind, namespace, meta["name"])
    action = action_for(manifest, existing)
    if action is Action.CREATE:
        try:
            _call("POST", path(api_version, kind, namespace), body=manifest, query=[STRICT])
        except ApiException as err:
            if err.status != 409:
                raise
            # Created meanwhile (another replica, a retry) or not in the cache yet: compare with what is there.
            action = action_for(manifest, get(api_version, kind, namespace, meta["name"]))
            if action is Action.CREATE:  # deleted again in between: the next reconcile creates it
                raise
    if action is Action.UPDATE:
        _call("PATCH", path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"]),
              body=manifest, query=[("fieldManager", FIELD_MANAGER), ("force", "true"), STRICT],
              content_type="application/apply-patch+yaml")
    return action


def create(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = manifest["metadata"]
    return _call("POST", path(manifest["apiVersion"], manifest["kind"], meta.get("namespace")), body=manifest,
                 query=[STRICT])


def delete(api_version: str, kind: str, namespace: str | None, name: str) -> bool:
    """Delete in the background (dependents go with it); False when it was already gone."""
    try:
        _call("DELETE", path(api_version, kind, namespace, name), body={"propagationPolicy": "Background"})
        return True
    except ApiException as err:
        if err.status == 404:
            return False
        raise


def patch_annotations(api_version: str, kind: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
    _call("PATCH", path(api_version, kind, namespace, name), body={"metadata": {"annotations": annotations}},
          content_type="application/merge-patch+json")


def resource_served(group_version: str, plural: str) -> bool:
    """Whether the API server serves a resource now (optional CRDs: RayJob, ServiceMonitor, PrometheusRule)."""
    key = f"{group_version}/{plural}"
    cached = _discovery.get(key)
    if cached and time.monotonic() - cached[0] < DISCOVERY_TTL:
        return cached[1]
    try:
        resources = _call("GET", f"/apis/{group_version}").get("resources", [])
        served = any(r.get("name") == plural for r in resources)
    except ApiException as err:
        if err.status != 404:
            raise
        served = False
    _discovery[key] = (time.monotonic(), served)
    return served


def forget_discovery() -> None:
    """Drop cached discovery answers, so that the next resource_served() asks the API server (an optional CRD
    installed or removed while the operator runs, as the RayJob tests do)."""
    _discovery.clear()
