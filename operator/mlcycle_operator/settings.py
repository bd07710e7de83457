"""Kopf settings, in one startup hook, each with the reason it is not the default."""

from __future__ import annotations

import logging
import random
import warnings
from typing import Any

import aiohttp
import kopf

from .config import HANDLER_THREADS, Config
from .handlers._cache import CHILD_KINDS, MANAGED, MEMBER_KINDS

PREFIX = "mlcycle.io"


def diffbase_storage() -> kopf.AnnotationsDiffBaseStorage:
    """Where Kopf keeps the last handled state of an object (to tell what changed): an annotation under PREFIX.
    Kopf leaves every PREFIX annotation out of what it compares, so signals meant as changes live elsewhere."""
    return kopf.AnnotationsDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.KubeContext | None:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG as it is when the operator starts (the client
    library would read it once at import time).

    Kopf's own session opens as many connections as it has requests in flight: with a thousand objects arriving
    at once, that was dozens of TLS connections of about 300 KiB each (asyncio's 256 KiB read buffer, OpenSSL's
    state), kept alive between bursts, which was most of the operator's memory growth per object. The same
    session with a bounded pool queues requests instead; the API server is the bottleneck then anyway."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    config = Config.from_env()
    if info is None or config.api_connections == 0:
        return info
    # One connection per watch stream (each watched kind, in each namespace watched, and peering), never queued.
    watches = (len(MEMBER_KINDS) + 1 + len(CHILD_KINDS)) * max(1, len(config.watch_namespaces)) + 1
    with warnings.catch_warnings():  # as Kopf does: its own credentials' deprecation notice, not aiohttp's
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="kopf")
        auth = info.as_aiohttp_basic_auth()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=watches + config.api_connections, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(), auth=auth, proxy=info.proxy_url, trust_env=info.trust_env)
    return kopf.AiohttpSession(aiohttp_session=session, server=info.server, priority=info.priority,
                               default_namespace=info.default_namespace, expiration=info.expiration)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    config = Config.from_env()
    memo.config = config
    # What the watching handlers last saw, to act on changes only: per operator, in its memo (each object's memo
    # is a shallow copy of this one, so they share these), never in a module, where two operators in one
    # process (the tests') would share it.
    memo.announced_jobs = set()  # TrainingJob uids whose gated model the tracking deployments were told about
    memo.server_available = {}  # model-server Deployment uid -> available replicas when last seen
    # Handler progress lives in annotations under our own prefix: status is ours and schema-pruned, so
    # Kopf's default status.kopf field would be dropped by the API server.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = diffbase_storage()
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Our transitions are posted as Events explicitly (kopf.info/warn). Kopf's own per-handler log lines
    # ("Timer ... succeeded" every few seconds) would drown them, so only its warnings become Events.
    settings.posting.level = logging.WARNING
    # Long server-side watch timeouts cost nothing; a client timeout just above catches dead connections
    # (a load balancer dropping idle streams) instead of hanging forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # The children Kopf watches for the cache are only ours: filter on the server, so a cluster's other
    # ConfigMaps, Services and Deployments never reach the operator.
    for group, version, plural in CHILD_KINDS.values():
        settings.watching.label_selectors[group, version, plural] = ",".join(f"{k}={v}" for k, v in MANAGED.items())
    settings.execution.max_workers = HANDLER_THREADS
    # Two replicas coordinate through Kopf peering when its CRDs exist; one replica does not need them.
    settings.peering.name = config.peering
    settings.peering.mandatory = False
    # Kopf pauses every replica that shares the highest priority with another; distinct priorities let
    # exactly one replica work while the others stand by.
    settings.peering.priority = random.randint(1, 2**31 - 1)
    settings.peering.clusterwide = not config.watch_namespaces
    logger.info("mlcycle operator configured: prometheus=%s namespaces=%s runtime image=%s",
                config.prometheus_url or "(none: analysis is inconclusive)",
                ",".join(config.watch_namespaces) or "(all)", config.runtime_image)
