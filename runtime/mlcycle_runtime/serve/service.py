"""The model server: a BentoML service that answers `POST /predict` for one model version.

`bentoml serve mlcycle_runtime.serve.service:ModelServer` imports this module in each worker; the config comes
from the file named by MLCYCLE_CONFIG (the entrypoint sets it). A request is parsed, validated and encoded first,
so a bad request gets its 4xx before it can join (and spoil) a batch; with batching on, requests of fewer than
`maxBatchSize` rows are scored together by the worker's own adaptive batcher (`batcher.py`, no HTTP hop), larger
ones at once. Each request is scored exactly once: a batch that fails is a 500 for its requests, counted and
logged once with its cause.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import bentoml
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from mlcycle_runtime import bodylimit
from mlcycle_runtime import config as cfg
from mlcycle_runtime import metrics as names
from mlcycle_runtime.features.store import EntityKeyError
from mlcycle_runtime.model import LoadedModel, load_version
from mlcycle_runtime.serve.batcher import Batcher, BatchFailed, Overloaded
from mlcycle_runtime.serve.handler import VERSION_HEADER, Rejection, RequestHandler, decode_body, scores

logger = logging.getLogger(__name__)

CONFIG_ENV = "MLCYCLE_CONFIG"
WORKERS_ENV = "MLCYCLE_SERVE_WORKERS"
DEVICE_ENV = "MLCYCLE_DEVICE"
# Requests (and batches) this small are scored on the event loop: a thread hop costs more than the prediction.
INLINE_ROWS = 64
# Rows per batch, for the batch-size histogram.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def settings() -> cfg.ServeConfig | None:
    """The workload's config when running as a server; None where nothing names one (unit tests, imports)."""
    path = os.environ.get(CONFIG_ENV)
    return cfg.load(cfg.ServeConfig, path) if path else None


_SETTINGS = settings()


class ServerMetrics:
    """mlcycle's own series beside BentoML's on /metrics; created in the worker, after BentoML set up multiprocess
    collection (prometheus_client must be imported after PROMETHEUS_MULTIPROC_DIR is set)."""

    def __init__(self, version: str, score_buckets: Sequence[float], registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = registry or REGISTRY
        self.version = version
        self.duration = Histogram(names.SERVER_DURATION, "Time to answer a prediction request, validation included",
                                  ["version"], buckets=names.LATENCY_BUCKETS, registry=registry).labels(version)
        self.predictions = Counter(names.SERVER_PREDICTIONS, "Records scored", ["version"],
                                   registry=registry).labels(version)
        self.score = Histogram(names.SERVER_SCORE, "Prediction scores (multiclass: the top class's probability)",
                               ["version"], buckets=score_buckets, registry=registry).labels(version)
        self._errors = Counter(names.SERVER_ERRORS, "Requests refused, by reason", ["version", "reason"],
                               registry=registry)
        self._shed = Counter(names.SERVER_BATCH_SHED, "Requests refused with 503 because the batch queue was full",
                             ["version"], registry=registry).labels(version)
        self.batch_size = Histogram(names.SERVER_BATCH_SIZE, "Rows per batch the adaptive batcher scored",
                                    ["version"], buckets=BATCH_BUCKETS, registry=registry).labels(version)
        self.batch_wait = Histogram(names.SERVER_BATCH_WAIT, "Time a request waited in the batch queue",
                                    ["version"], buckets=names.LATENCY_BUCKETS, registry=registry).labels(version)

    # The batcher's observer.
    def batch(self, rows: int, waits: list[float]) -> None:
        self.batch_size.observe(rows)
        for wait in waits:
            self.batch_wait.observe(wait)

    def shed(self) -> None:
        self._shed.inc()

    def error(self, reason: str) -> None:
        self._errors.labels(self.version, reason).inc()

    def scored(self, predictions: np.ndarray) -> None:
        self.predictions.inc(len(predictions))
        for value in scores(predictions):
            self.score.observe(float(value))


def scoring_device(env: Mapping[str, str], framework: str, cuda_built: bool | None = None) -> str:
    """Where the learner scores: `cuda` when the pod was given a GPU (the operator sets MLCYCLE_DEVICE=cuda for a
    deployment with `resources.gpu`), else `cpu`. A GPU the model cannot use is a config error, not a silent CPU.
    XGBoost's CUDA and CPU predictions agree to 1e-5 (float32 sums in another order)."""
    device = env.get(DEVICE_ENV, "cpu").strip().lower() or "cpu"
    if device not in ("cpu", "cuda"):
        raise cfg.ConfigError(f"{DEVICE_ENV}: expected cpu or cuda, got {device!r}")
    if device == "cpu":
        return device
    if framework != "xgboost":
        raise cfg.ConfigError(f"{DEVICE_ENV}=cuda: {framework} models score on CPU only; serve this version "
                              "without a GPU")
    if cuda_built is None:
        import xgboost

        cuda_built = bool(xgboost.build_info().get("USE_CUDA"))
    if not cuda_built:
        raise cfg.ConfigError(f"{DEVICE_ENV}=cuda, but this image's XGBoost was built without CUDA: build the "
                              "runtime image on a CUDA base (docs/runtime.md)")
    return device


def score_buckets(model: LoadedModel) -> list[float]:
    """The reference's prediction bin edges, so the live score histogram is comparable with training's."""
    ref = model.reference.prediction if model.reference else None
    edges = sorted({float(e) for e in (ref.edges or [])}) if ref is not None and ref.kind == "numeric" else []
    return edges or [i / 10 for i in range(1, 11)]


def fetch_online_features(repo_path: str, feature_service: str, entity_rows: list[dict[str, Any]]) -> list[dict]:
    """Per entity row, the features Feast's online store holds for it: a stored null stays None, a feature it holds
    nothing for is left out (an unknown entity gets {})."""
    from mlcycle_runtime.features.store import online_values

    return online_values(repo_path, feature_service, entity_rows)


def warm_online_store(repo_path: str) -> None:
    """Import Feast and open the store before readyz turns true, so the first keyed request does not pay seconds of
    imports on the event loop's thread pool; a store that cannot be opened yet is only logged (requests say why)."""
    try:
        from mlcycle_runtime.features.store import serving_store

        serving_store(repo_path)
    except Exception as err:
        logger.warning("online features: cannot open the Feast repository %s yet: %s", repo_path, err)


class PredictInput(bentoml.IODescriptor):
    """`{"records": [{feature: value}, ...], "version": optional}` as the schema and clients see it."""

    records: list[dict[str, Any]]
    version: str | None = None

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> PredictInput:
        # The body is parsed by the handler, not by pydantic: every way it can be wrong (malformed JSON included)
        # must get mlcycle's 4xx naming the problem, which BentoML's own validation error does not give.
        return cls.model_construct(records=await request.body(), version=None)


# This worker's server metrics, once its service has made them: the request size limit runs before the service
# sees a request, and counts its refusals there.
_metrics: ServerMetrics | None = None


def _count_too_large() -> None:
    if _metrics is not None:
        _metrics.error(bodylimit.REASON)


@bentoml.service(
    name="mlcycle-model-server",
    workers=int(os.environ.get(WORKERS_ENV, "1")),
    traffic={"timeout": 30},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    # A formatted log line per request costs more CPU than scoring one row; requests are counted on /metrics
    # (here and in the router) and every refusal or failure is logged. Likewise an OpenTelemetry span per request
    # (about a sixth of a one-row request's CPU) that no exporter is configured to send anywhere.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/predict", "/metrics", "/livez", "/readyz"]},
)
class ModelServer:
    """Serves one model version: loads it in __init__ (readyz stays false until then) and scores requests."""

    def __init__(self, config: cfg.ServeConfig | None = None,
                 loader: Callable[[str], LoadedModel] = load_version, registry: Any = None) -> None:
        self.ready = False
        config = config or settings()
        if config is None:
            raise cfg.ConfigError(f"no config: set {CONFIG_ENV} to the config file")
        if not config.model.uri:
            raise cfg.ConfigError("model.uri: the model server needs the URI of a model version")
        self.config = config
        self.model = loader(config.model.uri)
        card = self.model.card
        device = scoring_device(os.environ, card.framework)
        if card.framework == "xgboost":
            # XGBoost's default of one OpenMP thread per core costs ~10 ms of thread wake-up per one-row call on a
            # busy 2-core node (0.4 ms with one thread); a server scales by workers, one per core.
            self.model.predictor.learner.set_param({"nthread": 1, "device": device})
        if config.model.version and config.model.version != card.version:
            raise cfg.ConfigError(f"model.version: {config.model.version!r} was asked for, but {config.model.uri} "
                                  f"holds version {card.version!r}")
        online = config.online_features
        self.handler = RequestHandler(card, online.entity_keys if online else ())
        self.feature_repo = (config.feature_store or cfg.FeatureStoreRef()).repo_path
        self.lookup = fetch_online_features
        if online is not None:
            warm_online_store(self.feature_repo)
        self.metrics = ServerMetrics(card.version, score_buckets(self.model), registry)
        batching = config.batching
        self.batcher = (Batcher(self.model.predictor.predict, batching.max_batch_size,
                                batching.max_latency_ms / 1000, observer=self.metrics, run=_run_scoring)
                        if batching.enabled and batching.max_batch_size > 1 else None)
        global _metrics
        _metrics = self.metrics
        if _SETTINGS is not None:  # a server worker, not a test or an import
            # Everything loaded so far (BentoML, XGBoost, the model) lives as long as the worker: out of the
            # collector's generations, a full collection under load scans only what requests allocate.
            gc.collect()
            gc.freeze()
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.api(route="/predict", input_spec=PredictInput)
    async def predict(self, records: Any, version: str | None = None, ctx: bentoml.Context = None) -> dict[str, Any]:
        """Score records: `{"records": [...]}` → `{"model", "version", "predictions"}`; a bad request gets a 4xx."""
        if isinstance(records, bytes | bytearray):
            body, header = records, ctx.request.headers.get(VERSION_HEADER) if ctx is not None else None
        else:  # called in-process with Python values
            body, header = None, None
        status, answer = await self.handle(body, header, payload={"records": records, "version": version})
        if ctx is not None:
            ctx.response.status_code = status
        return JSONResponse(answer, status_code=status)

    async def handle(self, body: bytes | None, header_version: str | None = None,
                     payload: Any = None) -> tuple[int, dict[str, Any]]:
        """One request, start to end: the status code and the JSON answer (metrics included)."""
        with self.metrics.duration.time():
            try:
                records = self.handler.records(decode_body(body) if body is not None else payload, header_version)
                records = await self._with_online_features(records)
                self.handler.validate(records)
                matrix = self.handler.encode(records)
                if not self.model.predictor.accepts_missing and np.isnan(matrix).any():
                    # Learners such as LogisticRegression refuse NaN (a null or an unseen category): that is the
                    # request's doing, so it gets a 422 naming the values, before it can join a batch.
                    raise self.handler.unscorable_missing(records, matrix)
                predictions = await self._predict(matrix)
            except Rejection as rejection:
                self.metrics.error(rejection.reason)
                return rejection.status, rejection.body()
            self.metrics.scored(predictions)
            return 200, self.handler.answer(predictions)

    async def _with_online_features(self, records: list[Any]) -> list[Any]:
        online = self.config.online_features
        keyed = [i for i, r in enumerate(records) if self.handler.needs_lookup(r)] if online else []
        if not keyed:
            return records
        rows = [{k: records[i][k] for k in online.entity_keys} for i in keyed]
        try:
            found = await anyio.to_thread.run_sync(self.lookup, self.feature_repo, online.feature_service, rows)
        except EntityKeyError as err:  # a key of the wrong type: the request's fault, named per record
            raise self.handler.bad_entity_keys(keyed, err.problems) from None
        except ImportError as err:
            raise Rejection(501, "records carry only entity keys, but this server cannot read online features "
                                 f"({err})", "online_features_unavailable") from None
        except Exception as err:  # FeatureStoreError and the like: the store's fault, said in one line, not a 500
            raise Rejection(503, f"online features unavailable: {err}", "online_features_failed") from None
        merged = list(records)
        for i, features in zip(keyed, found, strict=True):
            # A stored null stays None, a missing value as in training; what the request carries wins over the
            # store: a client may override a stale feature.
            merged[i] = {**features, **records[i]}
        unknown = self.handler.unresolved_entities(merged, keyed, found, online.feature_service)
        if unknown is not None:
            raise unknown
        return merged

    async def _predict(self, matrix: np.ndarray) -> np.ndarray:
        """Scores through the batcher when it is on and the request is smaller than a batch, else at once."""
        try:
            if self.batcher is not None and len(matrix) < self.batcher.max_rows:
                return await self.batcher.submit(matrix)
            return await _run_scoring(lambda: self.model.predictor.predict(matrix), len(matrix))
        except Overloaded as err:
            raise Rejection(503, f"the server is overloaded: {err}; retry later", "shed") from None
        except BatchFailed as err:  # logged by the batcher, once per batch; counted per request by handle()
            raise Rejection(500, str(err), "scoring_failed") from None
        except Exception as err:
            logger.error("scoring %d row(s) failed: %s: %s", len(matrix), type(err).__name__, err)
            raise Rejection(500, f"scoring failed: {type(err).__name__}: {err}", "scoring_failed") from None


async def _run_scoring(score: Callable[[], np.ndarray], rows: int) -> np.ndarray:
    """Small matrices are scored on the event loop; big ones in a thread, so the loop keeps reading requests."""
    if rows <= INLINE_ROWS:
        return score()
    return await anyio.to_thread.run_sync(score)


# A body over the limit gets 413 before BentoML reads it all (PredictInput reads the whole body into memory).
ModelServer.add_asgi_middleware(
    bodylimit.BodyLimit, max_bytes=_SETTINGS.max_request_bytes if _SETTINGS else bodylimit.DEFAULT_MAX_REQUEST_BYTES,
    on_refused=_count_too_large)
