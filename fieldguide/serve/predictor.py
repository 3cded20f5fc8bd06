"""Serving logic of a release, shared by the BentoML service, the staging tests and the benches.

A release folder holds `release.json` (ids, versions, serving config) and one exported model bundle per model
(`router/`, `child-<group>/`), each safetensors weights + JSON metadata.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fieldguide.data.images import ImageLimits, ImageRejected, open_checked
from fieldguide.errors import FieldguideError
from fieldguide.evaluate.two_stage import combine
from fieldguide.keys import ModelKey
from fieldguide.serve.release import RELEASE_FILE, RELEASE_MODEL, Release, read_release
from fieldguide.train.models import META, ModelBundle, eval_transform, load_bundle, save_bundle


def write_release(release: Release, bundles: dict[str, ModelBundle], folder: Path) -> Path:
    """Export a release into `folder` (new or empty): release.json plus every model's safetensors + JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, bundle in bundles.items():
        save_bundle(bundle, folder / name)
    (folder / RELEASE_FILE).write_text(json.dumps(asdict(release), indent=1))
    return folder


def save_release_model(release: Release, bundles: dict[str, ModelBundle]) -> str:
    """Store the release in BentoML's model store as fieldguide-release:<release id>; return the tag."""
    import bentoml

    with bentoml.models.create(
        f"{RELEASE_MODEL}:{release.id}", labels={"release": release.id}, metadata={"versions": release.versions}
    ) as model:
        write_release(release, bundles, Path(model.path))
    return str(model.tag)


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


class TwoStagePredictor:
    """Router + children in memory (children optionally under an LRU cap), with the training eval transform."""

    def __init__(self, folder: Path, load_models: bool = True) -> None:
        """Read the release; with `load_models` False only metadata and the transform (for an HTTP front)."""
        self.folder = folder
        self.release = read_release(folder)
        self.config = self.release.serving
        router_meta = json.loads((folder / ModelKey.router().name / META).read_text())
        self.groups: list[str] = list(router_meta["classes"])
        self.transform = eval_transform(router_meta["data_config"])
        self.species: list[str] = []
        self.species_of: dict[int, list[int]] = {}
        for g, group in enumerate(self.groups):
            meta = json.loads((folder / ModelKey.child(group).name / META).read_text())
            if meta["data_config"] != router_meta["data_config"]:
                raise FieldguideError(f"{ModelKey.child(group)} was trained with another input size than the router")
            self.species_of[g] = list(range(len(self.species), len(self.species) + len(meta["classes"])))
            self.species += meta["classes"]
        self._children: OrderedDict[str, ModelBundle] = OrderedDict()
        self.router = load_bundle(folder / ModelKey.router().name) if load_models else None
        if load_models and not self.config.max_children_in_memory:
            for group in self.groups:
                self._child(group)
        self.limits = ImageLimits(allowed_formats=tuple(self.config.allowed_formats), max_pixels=self.config.max_pixels)

    def _child(self, group: str) -> ModelBundle:
        if group in self._children:
            self._children.move_to_end(group)
            return self._children[group]
        bundle = load_bundle(self.folder / ModelKey.child(group).name)
        self._children[group] = bundle
        cap = self.config.max_children_in_memory
        while cap and len(self._children) > cap:
            self._children.popitem(last=False)
        return bundle

    def loaded_children(self) -> list[str]:
        """Groups whose child is in memory now."""
        return list(self._children)

    def decode(self, data: bytes) -> torch.Tensor:
        """Validate and preprocess one upload exactly as evaluation did.

        Raises:
            BadRequest: too large, not an image, truncated, unsupported format, too many pixels.
        """
        if len(data) > self.config.max_bytes:
            raise BadRequest("too_large", f"upload is {len(data)} bytes; the limit is {self.config.max_bytes}")
        try:
            img = open_checked(data, self.limits)
        except ImageRejected as exc:
            raise BadRequest(exc.reason, exc.detail) from None
        return self.preprocess(img)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """The model's eval transform (resize, centre crop, normalise) of an RGB image."""
        return self.transform(img)

    @torch.no_grad()
    def forward(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, G + S) rows: router probabilities, then two-stage species probabilities."""
        if self.router is None:
            raise FieldguideError("this predictor was opened without its models")
        x = torch.as_tensor(x, dtype=torch.float32)
        p_group = self.router.model(x).softmax(1).numpy()
        k = min(self.config.route_k, len(self.groups))
        needed = np.unique(np.argsort(-p_group, axis=1)[:, :k])
        p_child = {
            int(g): self._child(self.groups[int(g)]).model(x).softmax(1).numpy() for g in needed
        }  # groups outside every row's top-k never contribute
        p_child.update({g: np.zeros((len(x), len(s))) for g, s in self.species_of.items() if g not in p_child})
        p_species = combine(p_group, p_child, self.species_of, len(self.species), k)
        return np.concatenate([p_group, p_species], axis=1).astype(np.float32)

    def describe(self, row: np.ndarray, latency_ms: float | None = None) -> dict[str, Any]:
        """The JSON answer for one forward row."""
        p_group, p_species = row[: len(self.groups)], row[len(self.groups) :]
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

    def classify(self, data: bytes) -> dict[str, Any]:
        """Validate, preprocess and answer one upload in process (the raw baseline of the served path)."""
        return self.describe(self.forward(self.decode(data)[None])[0])
