"""BentoML service of fieldguide's two-stage classifier (one release: a router and one child per group).

`bentoml serve bentos.service:Classifier` serves the newest `fieldguide-release` in the BentoML model store;
a bento built by the deploy pipeline pins its release (FIELDGUIDE_RELEASE=fieldguide-release:<id> at build time).
Two BentoML services, each in its own worker process: the HTTP front (`Classifier`) validates, decodes and
preprocesses uploads with fieldguide.serve.front (Pillow + numpy, the function evaluation uses; the front never
imports torch), and the model service (`TwoStageModel`, fieldguide.serve.predictor) runs the batched forward.

HTTP: `POST /classify` is a BentoML API (multipart field `file`; `bentoml.SyncHTTPClient(url).classify(file=...)`
calls it; its Swagger page is BentoML's `/`), `POST /feedback` (`{request_id, species}` or `{request_id, wrong:
true}`), `GET /release`, and BentoML's /healthz, /livez, /readyz, /metrics. SageMaker's container contract:
`GET /ping` and `POST /invocations` (the image bytes as the body, or base64 in JSON; answered like /classify);
the image serves on port 8080 inside the container (BENTOML_PORT, from the SageMaker model's environment and
bentofile.yaml).
Every answer is recorded by fieldguide.monitor.capture (BentoML's monitoring API: the prediction log) with its
features and reduced embeddings; its photo is held for feedback, or kept when sampled for review.
Every request first goes through fieldguide.serve.edge.UploadEdge: a request id on every answer, the upload limit
enforced while the body streams in, read timeouts, and a multipart check (so BentoML's parser never sees a body it
would answer 500 to).
The forward is a batched API of a dependent service; the batcher sheds load past FIELDGUIDE_MAX_LATENCY_MS.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fieldguide.serve.edge import RAW_UPLOADS, REQUEST_ID, UPLOADS, WARM_UP, UploadEdge
from fieldguide.serve.front import BadRequest
from fieldguide.serve.release import MAX_BATCH_SIZE, ServingConfig

RELEASE = bentoml.models.BentoModel(os.environ.get("FIELDGUIDE_RELEASE", "fieldguide-release:latest"))
# The batcher's latency budget (the release's serving.max_latency_ms, passed by the server starter).
MAX_LATENCY_MS = int(os.environ.get("FIELDGUIDE_MAX_LATENCY_MS", ServingConfig.max_latency_ms))
# HTTP front processes (the release's serving.front_workers, passed by the server starter).
FRONT_WORKERS = int(os.environ.get("FIELDGUIDE_FRONT_WORKERS", ServingConfig.front_workers))
FORWARD_ATTEMPTS = 3

# Only GET /release; BentoML's own OpenAPI page (at /) documents /classify.
http = FastAPI(title="fieldguide release info", docs_url=None, redoc_url=None, openapi_url=None)
logger = logging.getLogger("fieldguide.service")


@bentoml.service(
    name="fieldguide-model",
    workers=1,
    traffic={"timeout": 60},
    # The front→model hop is internal: no access log line, request metrics or trace span per call (the profile in
    # bench/serve.py showed them costing a fifth of this worker's CPU per request). The front keeps all three.
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
    tracing={"excluded_urls": ["/forward_batched", "/forward_single"]},
    # The fronts' client to this service keeps its session: BentoML's default replaces it every 100 calls and closes
    # the old one under calls still on it (failed or hung forwards and "Unclosed client session" at 200 req/s).
    runner_connection={"max_requests": 2**31 - 1, "max_age": 86400.0},
)
class TwoStageModel:
    """The models: router and children in memory, forwards batched across concurrent requests."""

    release = RELEASE

    def __init__(self) -> None:
        import torch

        from fieldguide.serve.predictor import TwoStagePredictor

        self.predictor = TwoStagePredictor(Path(self.release.path))
        if self.predictor.config.model_threads:
            torch.set_num_threads(self.predictor.config.model_threads)
        gc.freeze()  # startup's objects (torch, timm, the models) out of the collector's full passes: shorter pauses

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def forward_batched(self, x: np.ndarray) -> np.ndarray:
        """Adaptive batching: rows of concurrent requests share one forward."""
        return self.predictor.forward(x)

    @bentoml.api
    def forward_single(self, x: np.ndarray) -> np.ndarray:
        """One request, one forward (serving config `batching: false`)."""
        return self.predictor.forward(x)


SERVED: dict[str, int] = {}  # the front's serving settings, set when the service starts in its worker


def answer(ctx: bentoml.Context, status: int, body: dict[str, Any], retry_after: int = 0) -> dict[str, Any]:
    """An error answer: `body` with `status` (and Retry-After) set on the request's context."""
    ctx.response.status_code = status
    if retry_after:
        ctx.response.headers["Retry-After"] = str(retry_after)
    return body


def failed(rid: str, exc: Exception) -> tuple[int, dict[str, Any], int]:
    """A failure inside the model: logged with the request id, answered 500 with it."""
    logger.error("request %s failed in the model service: %s: %s", rid, type(exc).__name__, exc, exc_info=exc)
    body = {"error": "the model failed on this request; see the server log", "reason": "model_error"}
    return 500, {**body, "request_id": rid}, 0


def upload_limit() -> int:
    """The release's upload limit (read by the edge on the first request, after the service started)."""
    return SERVED["max_bytes"]


@bentoml.asgi_app(http, path="/")
@bentoml.service(name="fieldguide", workers=FRONT_WORKERS, traffic={"timeout": 60, "max_concurrency": 128})
class Classifier:
    """HTTP front: validation and preprocessing per request, then the batched two-stage forward."""

    release = RELEASE
    model = bentoml.depends(TwoStageModel)

    def __init__(self) -> None:
        from fieldguide.serve.front import ReleaseView

        # Release metadata and the transform only (no torch in this process); the weights live in the model service.
        self.view = ReleaseView(Path(self.release.path))
        SERVED["max_bytes"] = self.view.config.max_bytes
        self.capture = self._capture()
        gc.freeze()  # startup's objects (BentoML, pydantic, the release) out of the collector's full passes

    def _capture(self) -> Any:
        """The recorder of this server: its folder, name and settings come from fieldguide's server starter.

        A server started otherwise (a plain `bentoml serve`, the serving bench) records nothing.
        """
        import functools

        from fieldguide.monitor.capture import CAPTURE_VAR, MONITOR_DIR_VAR, SERVER_VAR, Capture
        from fieldguide.monitor.config import CaptureConfig
        from fieldguide.monitor.projections import META, REFERENCE_DIR
        from fieldguide.monitor.traffic import release_taxonomy
        from fieldguide.serve.servers import release_folder

        managed = os.environ.get(MONITOR_DIR_VAR)
        folder = Path(managed or Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "monitor" / "unmanaged")
        cfg = CaptureConfig(**json.loads(os.environ.get(CAPTURE_VAR) or "{}")) if managed else CaptureConfig(False)
        # One log per front process: several write the same folder, never the same file.
        name = os.environ.get(SERVER_VAR) or f"{self.view.release.id}-{os.getpid()}"
        server = f"{name}-w{bentoml.server_context.worker_index or 1}"
        meta_file = Path(self.release.path) / REFERENCE_DIR / META
        # A release assembled before monitoring has no reference: its answers are logged without embeddings.
        self.stored = (
            json.loads(meta_file.read_text()) if meta_file.is_file() else {"store_size": 96, "jpeg_quality": 90}
        )

        @functools.lru_cache(maxsize=16)
        def taxonomy(release_id: str) -> dict[str, str]:
            try:
                found = release_folder(release_id) if release_id != self.view.release.id else None
            except Exception:  # noqa: BLE001 - an answering release no longer stored: this release's taxonomy
                found = None
            groups = release_taxonomy(found or Path(self.release.path))
            return {species: group for group, names in groups.items() for species in names}

        capture = Capture(folder, server, cfg, taxonomy)
        if cfg.enabled:
            capture.start_sweeper()
        return capture

    @http.get("/release")
    def release_info(self) -> dict[str, Any]:
        """The release id, model versions, evaluation table, serving config and its stage now.

        The stage is the one the promotion routine last recorded (production, archived, failed), or `staging`
        before any was: release.json itself is frozen at assembly.
        """
        from dataclasses import asdict

        from fieldguide.serve.release import read_stage

        folder = os.environ.get("FIELDGUIDE_SERVING_DIR")
        stage = read_stage(Path(folder) if folder else None, self.view.release.id) or "staging"
        return {**asdict(self.view.release), "status": stage}

    @bentoml.api(route="/classify")
    async def classify(self, file: Path, ctx: bentoml.Context) -> dict[str, Any]:
        """An image upload → top-k species with probabilities, the group, the release's versions, the latency.

        Errors are JSON bodies with a reason and the request id; their status is set on `ctx` (BentoML applies
        the context's status to whatever an API returns).
        """
        data = await asyncio.to_thread(file.read_bytes)
        status, body, retry_after = await self._answer(data, ctx.request.headers)
        return answer(ctx, status, body, retry_after) if status != 200 else body

    @http.post("/invocations")
    async def invocations(self, request: Request) -> JSONResponse:
        """SageMaker's inference route: the same JSON and status codes as /classify.

        The body is the image bytes, or with Content-Type application/json `{"image": "<base64 of the bytes>"}`
        (for callers and emulators that only carry text).
        """
        data = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                data = base64.b64decode(json.loads(data)["image"], validate=True)
            except (ValueError, KeyError, TypeError):
                error = {"error": 'a JSON body is {"image": "<base64 of the image bytes>"}', "reason": "bad_json"}
                return JSONResponse({**error, "request_id": request.headers.get(REQUEST_ID, "")}, status_code=400)
        status, body, retry_after = await self._answer(data, request.headers)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return JSONResponse(body, status_code=status, headers=headers)

    @http.get("/ping")
    async def ping(self) -> JSONResponse:
        """SageMaker's health check: 200 once the model service answers, else 503."""
        is_ready = getattr(self.model, "is_ready", None)
        ready = await is_ready(5) if is_ready is not None else True
        body = {"status": "healthy" if ready else "starting", "release": self.view.release.id}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def _answer(self, data: bytes, headers: Any) -> tuple[int, dict[str, Any], int]:
        """(status, JSON body, Retry-After seconds) for one uploaded image: decode, preprocess, forward, record."""
        start = time.perf_counter()
        rid = headers.get(REQUEST_ID, "")
        try:
            img, x = await asyncio.to_thread(self._decode, data)
        except BadRequest as exc:
            return exc.status, {**exc.body(), "request_id": rid}, 0
        try:
            rows = await self._forward(x[None])
        except bentoml.exceptions.BentoMLException as exc:
            if exc.error_code.value == 503:  # the batcher shed this request: retrying later will work
                body = {"error": "the model service is overloaded; retry shortly", "reason": "overloaded"}
                return 503, {**body, "request_id": rid}, 1
            return failed(rid, exc)
        except aiohttp.ClientConnectionError:  # the model worker is down (its arbiter respawns it)
            body = {"error": "the model service is restarting; retry shortly", "reason": "unavailable"}
            return 503, {**body, "request_id": rid}, 2
        except Exception as exc:  # noqa: BLE001 - any model-side failure is a 500 carrying the request id
            return failed(rid, exc)
        result = {**self.view.describe(rows[0], (time.perf_counter() - start) * 1000), "request_id": rid}
        if headers.get(WARM_UP) or not self.capture.cfg.enabled:
            return 200, result, 0
        try:
            await asyncio.to_thread(self._record, result, rows[0], img, data)
        except Exception as exc:  # noqa: BLE001 - a recording failure (disk full) never costs the user the answer
            logger.error("request %s: recording failed: %s: %s", rid, type(exc).__name__, exc, exc_info=exc)
        return 200, result, 0

    def _decode(self, data: bytes) -> tuple[Any, np.ndarray]:
        """The validated RGB image (recorded with the answer) and the model's input."""
        img = self.view.open(data)
        return img, self.view.preprocess(img)

    def _record(self, result: dict[str, Any], row: np.ndarray, img: Any, data: bytes) -> None:
        """One prediction-log entry (ids, versions, image hash and features, reduced embeddings, answer, latency)."""
        from fieldguide.monitor.capture import log_entry, photo_extension

        self.capture.record(log_entry(self.view, self.stored, result, row, img, data), data, photo_extension(data))

    @http.post("/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        """A user's correction of an answer (`species`) or a flag that it was wrong (`wrong: true`).

        400 for a malformed body, 404 for a request id never answered, 422 for a species outside the release.
        """
        from fieldguide.monitor.capture import FeedbackRefused

        body = await request.body()
        try:
            out = await asyncio.to_thread(self.capture.feedback, body)
        except FeedbackRefused as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse(out)

    async def _forward(self, x: np.ndarray) -> np.ndarray:
        """The model service's forward, retried when its keep-alive connection drops (the call is idempotent)."""
        call = self.model.to_async.forward_batched if self.view.config.batching else self.model.to_async.forward_single
        for attempt in range(FORWARD_ATTEMPTS):
            try:
                return await call(x)
            except (aiohttp.ClientConnectionError, RuntimeError) as exc:
                # BentoML 1.4.40's service-to-service client retries nothing: a pooled connection the model
                # service closed while idle surfaces as "Server disconnected", and its session replacement (once
                # per runner_connection.max_age, set on TwoStageModel) closes calls still on the old session with
                # aiohttp's RuntimeError("Connection closed.").
                stale = not isinstance(exc, RuntimeError) or str(exc).startswith("Connection closed")
                if not stale or attempt == FORWARD_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


Classifier.add_asgi_middleware(UploadEdge, uploads=UPLOADS, max_bytes=upload_limit, raw_uploads=RAW_UPLOADS)
