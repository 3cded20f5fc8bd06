"""Serving logic of a release with its models, shared by the model service, the staging tests and the benches.

The torch-free part (metadata, validation, preprocessing, answers) is fieldguide.serve.front.ReleaseView, which
the HTTP front uses on its own. A release folder holds `release.json` (ids, versions, serving config) and one
exported model bundle per model (`router/`, `child-<group>/`), each safetensors weights + JSON metadata.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fieldguide.evaluate.metrics import forward_with_embedding
from fieldguide.evaluate.two_stage import combine, routes
from fieldguide.keys import ModelKey
from fieldguide.serve.front import ReleaseView
from fieldguide.serve.release import RELEASE_FILE, RELEASE_MODEL, Release
from fieldguide.train.models import ModelBundle, load_bundle, save_bundle

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


class TwoStagePredictor(ReleaseView):
    """Router + children in memory (children optionally under an LRU cap) on top of the release's view."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._children: OrderedDict[str, ModelBundle] = OrderedDict()
        self.router = load_bundle(folder / ModelKey.router().name)
        if not self.config.max_children_in_memory:
            for group in self.groups:
                self._child(group)

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

    @torch.inference_mode()
    def parts(self, x: np.ndarray | torch.Tensor) -> Forward:
        """Router and two-stage species probabilities, and the pre-logits embeddings monitoring reduces and logs.

        Each child runs only on the rows whose top route_k groups include its group (the other rows' products with
        it are never summed). The embeddings are the router's and, per row, those of its top-1 group's child.
        """
        x = torch.as_tensor(x, dtype=torch.float32)
        logits, router_pre = forward_with_embedding(self.router.model, x)
        p_group = logits.softmax(1).numpy()
        k = min(self.config.route_k, len(self.groups))
        routed = routes(p_group, k)
        p_child: dict[int, np.ndarray] = {}
        child_pre: dict[int, np.ndarray] = {}
        for g in np.unique(routed).tolist():  # groups no row is routed to are never summed: never run
            rows = np.flatnonzero((routed == g).any(axis=1))
            logits, pre = forward_with_embedding(self._child(self.groups[g]).model, x[torch.from_numpy(rows)])
            p_child[g] = np.zeros((len(x), len(self.species_of[g])), np.float32)
            p_child[g][rows] = logits.softmax(1).numpy()
            child_pre[g] = np.zeros((len(x), pre.shape[1]), np.float32)
            child_pre[g][rows] = pre.numpy()
        p_species = combine(p_group, p_child, self.species_of, len(self.species), k)
        top = routed[:, 0]
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

    def classify(self, data: bytes) -> dict[str, Any]:
        """Validate, preprocess and answer one upload in process (the raw baseline of the served path)."""
        return self.describe(self.forward(self.decode(data)[None])[0])
