"""Shared wiring of the parent and child pipelines: tuning fan-out, fan-in, full training."""

from typing import Any

from zenml.client import Client

from steps.train import select_best, train_model, tune_trial


def train_stage(
    shard_set_id: str,
    view: dict[str, Any],
    train: dict[str, Any],
    tuning: dict[str, Any],
    trials: list[dict[str, Any]],
    experiment_tracker: str,
    checkpoint_dir: str,
) -> Any:
    """N trial steps (tune_trial_0..N-1) → select_best → train_model, all on the same shard set artifact."""
    shard_set = Client().get_artifact_version(shard_set_id)
    tracked = {"experiment_tracker": experiment_tracker} if experiment_tracker else {}
    nested = {"settings": {"experiment_tracker": {"nested": True}}} if experiment_tracker else {}
    results = [
        tune_trial.with_options(**tracked, **nested)(
            shard_set=shard_set, view=view, train=train, tuning=tuning, index=i, trial=trial, id=f"tune_trial_{i}"
        )
        for i, trial in enumerate(trials)
    ]
    _, best_params = select_best.with_options(**tracked)(trials=results)
    model, _ = train_model.with_options(**tracked)(
        shard_set=shard_set, view=view, train=train, best_params=best_params, checkpoint_dir=checkpoint_dir
    )
    return model
