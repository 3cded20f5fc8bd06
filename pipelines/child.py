"""The child pipeline: one group's species → tuning → full training (a new species retrains one child)."""

from typing import Any

from zenml import pipeline

from fieldguide.keys import ModelKey
from pipelines.training import train_stage


@pipeline(name="fieldguide_child")
def child_pipeline(
    shard_set_id: str,
    group: str,
    train: dict[str, Any],
    tuning: dict[str, Any],
    trials: list[dict[str, Any]],
    gate: dict[str, Any],
    experiment_tracker: str = "",
    checkpoint_dir: str = "",
    fingerprint: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
) -> Any:
    """Train the species classifier of `group`."""
    view = ModelKey.child(group).view()
    return train_stage(
        shard_set_id, view, train, tuning, trials, gate, experiment_tracker, checkpoint_dir, fingerprint or {}, init
    )
