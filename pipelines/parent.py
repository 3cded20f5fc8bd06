"""The parent (router) pipeline: group-balanced view → tuning → full training."""

from typing import Any

from zenml import pipeline

from fieldguide.keys import ModelKey
from pipelines.training import train_stage


@pipeline(name="fieldguide_parent")
def parent_pipeline(
    shard_set_id: str,
    per_group: int,
    train: dict[str, Any],
    tuning: dict[str, Any],
    trials: list[dict[str, Any]],
    gate: dict[str, Any],
    experiment_tracker: str = "",
    checkpoint_dir: str = "",
    fingerprint: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
) -> Any:
    """Train the router that picks a plant group."""
    view = ModelKey.router().view(per_group)
    return train_stage(
        shard_set_id, view, train, tuning, trials, gate, experiment_tracker, checkpoint_dir, fingerprint or {}, init
    )
