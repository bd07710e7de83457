"""The operator's API session: Kopf's own, but with a bounded connection pool (one connection per watch plus
MLCYCLE_API_CONNECTIONS for requests); 0 keeps Kopf's unbounded default."""

from __future__ import annotations

import asyncio

import kopf
import pytest
import yaml

from mlcycle_operator import settings

KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "c",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}}],
    "users": [{"name": "u", "user": {"token": "t0ken"}}],
    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
}


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(KUBECONFIG))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def login() -> kopf.KubeContext | None:
    async def run():
        context = await settings.login(settings=kopf.OperatorSettings(), logger=None)
        if isinstance(context, kopf.AiohttpSession):
            limit, headers = context.aiohttp_session.connector.limit, dict(context.aiohttp_session.headers)
            await context.aiohttp_session.close()
            return context, limit, headers
        return context, None, None
    return asyncio.run(run())


@pytest.mark.parametrize(("namespaces", "watches"), [("", 8), ("a,b", 15)])
def test_the_pool_holds_every_watch_and_the_requests(kubeconfig, monkeypatch, namespaces, watches):
    monkeypatch.setenv("MLCYCLE_WATCH_NAMESPACES", namespaces)
    monkeypatch.setenv("MLCYCLE_API_CONNECTIONS", "20")
    context, limit, headers = login()
    # Seven kinds watched (the four mlcycle kinds, Deployments, Jobs, HorizontalPodAutoscalers) per namespace,
    # and peering.
    assert limit == watches + 20
    assert context.server == "https://127.0.0.1:6443" and context.default_namespace == "ml"
    assert headers["Authorization"] == "Bearer t0ken"


def test_zero_keeps_kopfs_own_session(kubeconfig, monkeypatch):
    monkeypatch.setenv("MLCYCLE_API_CONNECTIONS", "0")
    context, _, _ = login()
    assert isinstance(context, kopf.ConnectionInfo) and context.token == "t0ken"
