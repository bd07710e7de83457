"""With the Prometheus Operator's own CRDs (v0.94.0's ServiceMonitor and PrometheusRule, from its Go module),
a ModelDeployment that asks for a ServiceMonitor and a DriftMonitor with alerting get them: owned, and with
nothing the builders set dropped by those schemas. Without the CRDs (every other module) neither is made."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from mlcycle_operator.api.driftmonitor import DriftMonitorSpec
from mlcycle_operator.api.modeldeployment import ModelDeploymentSpec
from mlcycle_operator.resources import monitor, serving
from mlcycle_operator.resources.common import Meta
from tests.harness import prometheus_operator
from tests.harness.binaries import BuildError
from tests.harness.pytest_support import unavailable
from tests.integration.helpers import EXAMPLES, Mlcycle, crds_served, missing, wait_for

MONITORING = ("monitoring.coreos.com", "v1")


@pytest.fixture(scope="module")
def monitoring_crds(api_client, operator):
    try:
        paths = prometheus_operator.crd_paths()
    except BuildError as err:
        unavailable("the Prometheus Operator's CRDs", str(err))
    with crds_served(api_client, paths, "/".join(MONITORING)):
        yield paths


def read(ml: Mlcycle, plural: str, name: str) -> dict[str, Any] | None:
    try:
        return ml.objects.get_namespaced_custom_object(*MONITORING, ml.namespace, plural, name)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def owner(obj: dict[str, Any]) -> tuple[str, str, bool] | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next(((r["kind"], r["uid"], r.get("controller", False)) for r in refs), None)


def test_servicemonitor_and_prometheusrule_meet_the_real_schemas(ml: Mlcycle, monitoring_crds):
    ml.create(EXAMPLES["MLProject"])
    md = copy.deepcopy(EXAMPLES["ModelDeployment"])
    md["spec"]["model"] = {"name": "churn-classifier", "version": "v1"}
    md["spec"]["serviceMonitor"] = True
    md = ml.create(md)
    dm = copy.deepcopy(EXAMPLES["DriftMonitor"])
    dm["spec"]["reference"] = {"source": "Uri", "uri": "pvc://churn-models/reference/churn.parquet"}
    dm = ml.create(dm)

    scrape = wait_for(lambda: read(ml, "servicemonitors", "churn"), what="the ServiceMonitor")
    assert owner(scrape) == ("ModelDeployment", md["metadata"]["uid"], True)
    built = serving.service_monitor(ModelDeploymentSpec.model_validate(md["spec"]), Meta("churn", ml.namespace))
    assert not missing(built["spec"], scrape["spec"]), missing(built["spec"], scrape["spec"])

    rule = wait_for(lambda: read(ml, "prometheusrules", "churn-drift"), what="the PrometheusRule")
    assert owner(rule) == ("DriftMonitor", dm["metadata"]["uid"], True)
    built = monitor.prometheus_rule(DriftMonitorSpec.model_validate(dm["spec"]), Meta("churn", ml.namespace), "churn")
    assert not missing(built["spec"], rule["spec"]), missing(built["spec"], rule["spec"])
    [alert] = rule["spec"]["groups"][0]["rules"]
    assert alert["alert"] and "churn" in alert["expr"]
