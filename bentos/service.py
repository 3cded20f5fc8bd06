"""BentoML service of fieldguide's two-stage classifier (one release: a router and one child per group).

`bentoml serve bentos.service:Classifier` serves the newest `fieldguide-release` in the BentoML model store;
a bento built by the deploy pipeline pins its release (FIELDGUIDE_RELEASE=fieldguide-release:<id> at build time).
Preprocessing and the two-stage forward are fieldguide's own (fieldguide.serve.predictor), as in evaluation.

HTTP routes: POST /classify (multipart field `file`), GET /release, and BentoML's /healthz, /livez, /readyz,
/metrics. /classify is a FastAPI route on the BentoML service rather than a @bentoml.api: BentoML 1.4.40's own
multipart parser answers 500 to an upload under an unexpected field name with non-UTF-8 bytes, and every bad
request must get a 4xx. The forward itself is a @bentoml.api with adaptive batching in a dependent service.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import JSONResponse

RELEASE = bentoml.models.BentoModel(os.environ.get("FIELDGUIDE_RELEASE", "fieldguide-release:latest"))

http = FastAPI(title="fieldguide two-stage classifier")
FORWARD_ATTEMPTS = 3


@bentoml.service(name="fieldguide-model", workers=1, traffic={"timeout": 60})
class TwoStageModel:
    """The models: router and children in memory, forwards batched across concurrent requests."""

    release = RELEASE

    def __init__(self) -> None:
        from fieldguide.serve.predictor import TwoStagePredictor

        self.predictor = TwoStagePredictor(Path(self.release.path))

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def forward_batched(self, x: np.ndarray) -> np.ndarray:
        """Adaptive batching: rows of concurrent requests share one forward."""
        return self.predictor.forward(x)

    @bentoml.api
    def forward_single(self, x: np.ndarray) -> np.ndarray:
        """One request, one forward (serving config `batching: false`)."""
        return self.predictor.forward(x)


@bentoml.asgi_app(http, path="/")
@bentoml.service(name="fieldguide", workers=1, traffic={"timeout": 60, "max_concurrency": 128})
class Classifier:
    """HTTP front: validation and preprocessing per request, then the batched two-stage forward."""

    release = RELEASE
    model = bentoml.depends(TwoStageModel)

    def __init__(self) -> None:
        from fieldguide.serve.predictor import TwoStagePredictor

        # Release metadata and the transform only; the weights live in the model service.
        self.predictor = TwoStagePredictor(Path(self.release.path), load_models=False)

    @http.get("/release")
    def release_info(self) -> dict[str, Any]:
        """The release id, model versions, evaluation table, serving config and its stage now.

        The stage is the one the promotion routine last recorded (production, archived, failed), or `staging`
        before any was: release.json itself is frozen at assembly.
        """
        from dataclasses import asdict

        from fieldguide.serve.release import read_stage

        folder = os.environ.get("FIELDGUIDE_SERVING_DIR")
        stage = read_stage(Path(folder) if folder else None, self.predictor.release.id) or "staging"
        return {**asdict(self.predictor.release), "status": stage}

    @http.post("/classify")
    async def classify(self, request: Request, file: UploadFile = File(...)) -> Any:  # noqa: B008 - FastAPI idiom
        """An image upload → top-k species with probabilities, the group, the release's versions, the latency."""
        from fieldguide.serve.predictor import BadRequest

        start = time.perf_counter()
        limit = self.predictor.config.max_bytes
        try:
            declared = int(request.headers.get("content-length") or 0)
            if declared > limit + 64 * 1024:  # multipart framing on top of the file itself
                raise BadRequest("too_large", f"request is {declared} bytes; the upload limit is {limit}")
            data = await file.read(limit + 1)
            x = await asyncio.to_thread(self.predictor.decode, data)
        except BadRequest as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        try:
            rows = await self._forward(x.numpy()[None])
        except bentoml.exceptions.BentoMLException as exc:
            # The adaptive batcher sheds load it cannot serve within max_latency_ms: tell the client to retry.
            status = exc.error_code.value if exc.error_code.value >= 500 else 503
            body = {"error": f"the model service is busy ({exc}); retry shortly", "reason": "overloaded"}
            return JSONResponse(body, status_code=status, headers={"Retry-After": "1"})
        return self.predictor.describe(rows[0], (time.perf_counter() - start) * 1000)

    async def _forward(self, x: np.ndarray) -> np.ndarray:
        """The model service's forward, retried when its keep-alive connection drops (the call is idempotent)."""
        import aiohttp

        call = (
            self.model.to_async.forward_batched
            if self.predictor.config.batching
            else self.model.to_async.forward_single
        )
        for attempt in range(FORWARD_ATTEMPTS):
            try:
                return await call(x)
            except aiohttp.ClientConnectionError:
                # BentoML 1.4.40's service-to-service client does not retry a pooled connection the model
                # service has just closed; under concurrent load that surfaces as "Server disconnected".
                if attempt == FORWARD_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")
