"""A release's monitoring reference: its models' view of the evaluation split, saved inside the release.

`reference/reference.parquet` holds one row per test image: the image features (as stored in the shards), the
reduced embeddings of the router and of the child the router sent it to, both models' answers and confidences,
and the true labels. `reference/projections.npz` holds the reductions (a PCA per model, fitted on those same
images), which the server applies to every request before logging it, so production traffic and the reference
are always compared in one space.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fieldguide.data.images import image_stats
from fieldguide.errors import FieldguideError
from fieldguide.keys import ModelKey
from fieldguide.monitor.projections import META, REFERENCE_DIR, Projections, observation

if TYPE_CHECKING:
    from fieldguide.data.shards import ShardSet

TABLE = "reference.parquet"
ROUTER = ModelKey.router().name


def embedding_columns(prefix: str, width: int) -> list[str]:
    """Column names of a reduced embedding: router_emb_0 … (prefix 'router' or 'child')."""
    return [f"{prefix}_emb_{i}" for i in range(width)]


@dataclass
class Reference:
    """The reference table of a release and what it was built from."""

    table: pd.DataFrame
    meta: dict[str, Any]  # release, dataset_version, split, store_size, jpeg_quality, width, n

    def rows_of(self, model: str) -> pd.DataFrame:
        """The rows a model saw: every row for the router, the rows routed to its group for a child."""
        if model == ROUTER:
            return self.table
        return self.table[self.table["child_model"] == model]


def load_reference(release_folder: Path) -> Reference:
    """The reference saved in a release folder.

    Raises:
        FieldguideError: the release was assembled before monitoring existed (roll out a new release).
    """
    folder = release_folder / REFERENCE_DIR
    if not (folder / TABLE).is_file():
        raise FieldguideError(
            f"release folder {release_folder} has no monitoring reference (assembled before monitoring): "
            "deploy a new release to monitor it"
        )
    return Reference(pd.read_parquet(folder / TABLE), json.loads((folder / META).read_text()))


def build_reference(release_folder: Path, shard_set: ShardSet, width: int, batch_size: int = 64) -> Reference:
    """Run the release's own predictor over the test split; fit the per-model reductions; save both in the folder.

    The images come from the shards as stored, so their features match what the server computes on an upload
    after storing it the same way (fieldguide.monitor.capture.as_stored).
    """
    from fieldguide.data.loader import ShardDataset
    from fieldguide.data.shards import flat_view
    from fieldguide.serve.predictor import TwoStagePredictor

    predictor = TwoStagePredictor(release_folder)
    predictor.projections = None  # raw embeddings: the reductions are fitted on them below
    view = flat_view(shard_set)
    group_of = shard_set.classes.species_group
    dataset = ShardDataset(
        shard_set, "test", view, lambda img: (predictor.preprocess(img), image_stats(img)), with_keys=True
    )
    rows: list[dict[str, Any]] = []
    router_pre: list[np.ndarray] = []
    child_pre: list[np.ndarray] = []
    batch: list[tuple[Any, dict[str, float], int, str]] = []

    def truth(label: int, key: str) -> dict[str, Any]:
        species = view.labels[label]
        return {"key": key, "true_species": species, "true_group": group_of[species]}

    def flush() -> None:
        out = predictor.parts(np.stack([b[0] for b in batch]))
        router_pre.append(out.router_pre)
        child_pre.extend(out.child_pre)
        for i, (_, feats, label, key) in enumerate(batch):
            rows.append(observation(predictor, out.p_group[i], out.p_species[i]) | feats | truth(label, key))
        batch.clear()

    for (x, feats), label, key in dataset:
        batch.append((x, feats, label, key))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not rows:
        raise FieldguideError(f"dataset {shard_set.dataset_version} has no test images to build a reference from")
    table = pd.DataFrame(rows)
    table["correct"] = (table["species"] == table["true_species"]) & (table["group"] == table["true_group"])
    table["router_correct"] = table["group"] == table["true_group"]
    embeddings = {ROUTER: np.concatenate(router_pre)}
    models = list(table["child_model"])
    for model in sorted(set(models)):
        embeddings[model] = np.stack([pre for m, pre in zip(models, child_pre, strict=True) if m == model])
    projections = Projections.fit(embeddings, width)
    reduced_router = projections.reduce(ROUTER, embeddings[ROUTER])
    reduced_child = projections.reduce_each(models, child_pre)
    table = pd.concat(
        [
            table,
            pd.DataFrame(reduced_router, columns=embedding_columns("router", width)),
            pd.DataFrame(reduced_child, columns=embedding_columns("child", width)),
        ],
        axis=1,
    )
    meta = {
        "release": predictor.release.id,
        "dataset_version": shard_set.dataset_version,
        "split": "test",
        "store_size": shard_set.store_size,
        "jpeg_quality": shard_set.jpeg_quality or 90,
        "width": width,
        "n": len(table),
    }
    folder = release_folder / REFERENCE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / TABLE, index=False)
    projections.save(folder)
    (folder / META).write_text(json.dumps(meta, indent=1))
    return Reference(table, meta)
