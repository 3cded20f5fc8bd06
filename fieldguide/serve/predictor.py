"""Serving logic of a release, shared by the BentoML service, the staging tests and the benches.

A release folder holds `release.json` (ids, versions, serving config) and one exported model bundle per model
(`router/`, `child-<group>/`), each safetensors weights + JSON metadata.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from fieldguide.data.images import ImageLimits, ImageRejected, open_checked
from fieldguide.errors import FieldguideError
from fieldguide.evaluate.metrics import forward_with_embedding
from fieldguide.evaluate.two_stage import combine
from fieldguide.keys import ModelKey
from fieldguide.monitor.reference import Projections
from fieldguide.serve.release import RELEASE_FILE, RELEASE_MODEL, Release, read_release
from fieldguide.train.models import META, ModelBundle, eval_transform, load_bundle, save_bundle

if TYPE_CHECKING:
    from fieldguide.data.shards import ShardSet


def write_release(release: Release, bundles: dict[str, ModelBundle], folder: Path) -> Path:
    """Export a release into `folder` (new or empty): release.json plus every model's safetensors + JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, bundle in bundles.items():
        save_bundle(bundle, folder / name)
    (folder / RELEASE_FILE).write_text(json.dumps(asdict(release), indent=1))
    return folder


def save_release_model(
    release: Release, bundles: dict[str, ModelBundle], shard_set: ShardSet | None = None, components: int = 8
) -> str:
    """Store the release in BentoML's model store as fieldguide-release:<release id>; return the tag.

    With `shard_set`, the release carries its monitoring reference (fieldguide.monitor.reference) built on its
    test split with `components` embedding components per model.
    """
    import bentoml

    from fieldguide.monitor.reference import build_reference

    with bentoml.models.create(
        f"{RELEASE_MODEL}:{release.id}", labels={"release": release.id}, metadata={"versions": release.versions}
    ) as model:
        write_release(release, bundles, Path(model.path))
        if shard_set is not None:
            build_reference(Path(model.path), shard_set, components)
    return str(model.tag)


@dataclass
class Forward:
    """One batch through the two-stage model, before the embeddings are reduced."""

    p_group: np.ndarray  # (N, G) router probabilities
    p_species: np.ndarray  # (N, S) two-stage species probabilities
    router_pre: np.ndarray  # (N, D) router pre-logits embeddings
    child_pre: list[np.ndarray]  # per row: the pre-logits embedding of its top-1 group's child


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
        # The release's embedding reductions (absent in a release assembled before monitoring: no embeddings logged).
        self.projections = Projections.load(folder)
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

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """The model's eval transform (resize, centre crop, normalise) of an RGB image."""
        return self.transform(img)

    @torch.no_grad()
    def parts(self, x: np.ndarray | torch.Tensor) -> Forward:
        """Router and two-stage species probabilities, and the pre-logits embeddings monitoring reduces and logs.

        The embeddings are the router's and, per row, those of its top-1 group's child.
        """
        if self.router is None:
            raise FieldguideError("this predictor was opened without its models")
        x = torch.as_tensor(x, dtype=torch.float32)
        logits, router_pre = forward_with_embedding(self.router.model, x)
        p_group = logits.softmax(1).numpy()
        k = min(self.config.route_k, len(self.groups))
        needed = np.unique(np.argsort(-p_group, axis=1)[:, :k])  # groups outside every row's top-k never contribute
        p_child, child_pre = {}, {}
        for g in needed:
            logits, pre = forward_with_embedding(self._child(self.groups[int(g)]).model, x)
            p_child[int(g)], child_pre[int(g)] = logits.softmax(1).numpy(), pre.numpy()
        p_child.update({g: np.zeros((len(x), len(s))) for g, s in self.species_of.items() if g not in p_child})
        p_species = combine(p_group, p_child, self.species_of, len(self.species), k)
        top = p_group.argmax(1)
        return Forward(p_group, p_species, router_pre.numpy(), [child_pre[int(g)][i] for i, g in enumerate(top)])

    def forward(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, G + S + 2E) rows: router and two-stage species probabilities, then the reduced embeddings.

        The embeddings are the router's and the top-1 group child's, E wide each (the release's width; 0 without a
        monitoring reference).
        """
        out = self.parts(x)
        rows = [out.p_group, out.p_species]
        if self.projections is not None:
            rows.append(self.projections.reduce(ModelKey.router().name, out.router_pre))
            names = [self.child_name(int(g)) for g in out.p_group.argmax(1)]
            rows.append(self.projections.reduce_each(names, out.child_pre))
        return np.concatenate(rows, axis=1).astype(np.float32)

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

    def classify(self, data: bytes) -> dict[str, Any]:
        """Validate, preprocess and answer one upload in process (the raw baseline of the served path)."""
        return self.describe(self.forward(self.decode(data)[None])[0])
