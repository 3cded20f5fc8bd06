"""What the HTTP front knows of a release, without torch: metadata, taxonomy, validation, preprocessing, answers.

The front (bentos/service.py's Classifier) decodes and preprocesses uploads with this and sends the model service
only the (N, 3, H, W) arrays; fieldguide.serve.predictor.TwoStagePredictor adds the models on top of it. Importing
this module must never import torch (tests/test_preprocess.py checks it in a fresh interpreter).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fieldguide.data.images import EvalTransform, ImageLimits, ImageRejected, open_checked
from fieldguide.errors import FieldguideError
from fieldguide.keys import MODEL_META, ModelKey
from fieldguide.monitor.projections import Projections
from fieldguide.serve.release import read_release


class BadRequest(Exception):
    """A request the service refuses, with the HTTP status and a machine-readable reason."""

    STATUS = {"too_large": 413, "too_many_pixels": 413, "format_not_allowed": 415}

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = self.STATUS.get(reason, 400)

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.detail, "reason": self.reason}


class ReleaseView:
    """A release folder read without its weights: groups, species, the eval transform, limits and answers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.release = read_release(folder)
        self.config = self.release.serving
        router_meta = json.loads((folder / ModelKey.router().name / MODEL_META).read_text())
        self.groups: list[str] = list(router_meta["classes"])
        data_config = router_meta["data_config"]
        self.transform = EvalTransform.of(data_config)
        self.species: list[str] = []
        self.species_of: dict[int, list[int]] = {}
        for g, group in enumerate(self.groups):
            meta = json.loads((folder / ModelKey.child(group).name / MODEL_META).read_text())
            if meta["data_config"] != data_config:
                raise FieldguideError(f"{ModelKey.child(group)} was trained with another input size than the router")
            self.species_of[g] = list(range(len(self.species), len(self.species) + len(meta["classes"])))
            self.species += meta["classes"]
        # The release's embedding reductions (absent in a release assembled before monitoring: no embeddings logged).
        self.projections = Projections.load(folder)
        self.limits = ImageLimits(allowed_formats=tuple(self.config.allowed_formats), max_pixels=self.config.max_pixels)

    def taxonomy(self) -> dict[str, list[str]]:
        """Group → its species."""
        return {self.groups[g]: [self.species[i] for i in ids] for g, ids in self.species_of.items()}

    def decode(self, data: bytes) -> np.ndarray:
        """Validate and preprocess one upload exactly as evaluation did: the model's (3, H, W) float32 input.

        Raises:
            BadRequest: too large, not an image, truncated, unsupported format, too many pixels.
        """
        return self.preprocess(self.open(data))

    def open(self, data: bytes) -> Image.Image:
        """Validate one upload and decode it to an oriented RGB image.

        Raises:
            BadRequest: too large, not an image, truncated, unsupported format, too many pixels.
        """
        if len(data) > self.config.max_bytes:
            raise BadRequest("too_large", f"upload is {len(data)} bytes; the limit is {self.config.max_bytes}")
        try:
            return open_checked(data, self.limits)
        except ImageRejected as exc:
            raise BadRequest(exc.reason, exc.detail) from None

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """The models' eval transform (resize, centre crop, normalise) of an RGB image, as in evaluation."""
        return self.transform(img)

    def child_name(self, g: int) -> str:
        """The registry name of group g's child."""
        return ModelKey.child(self.groups[g]).name

    def split(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A forward row → router probabilities, species probabilities, reduced router and child embeddings."""
        g, s = len(self.groups), len(self.species)
        e = self.projections.width if self.projections is not None else 0
        return row[:g], row[g : g + s], row[g + s : g + s + e], row[g + s + e : g + s + 2 * e]

    def describe(self, row: np.ndarray, latency_ms: float | None = None) -> dict[str, Any]:
        """The JSON answer for one forward row."""
        p_group, p_species, _, _ = self.split(row)
        g = int(p_group.argmax())
        top = np.argsort(-p_species)[: self.config.top_k]
        out: dict[str, Any] = {
            "species": [{"name": self.species[i], "probability": round(float(p_species[i]), 5)} for i in top],
            "group": {"name": self.groups[g], "probability": round(float(p_group[g]), 5)},
            "release": self.release.id,
            "versions": self.release.versions,
        }
        if latency_ms is not None:
            out["latency_ms"] = round(latency_ms, 2)
        return out
