"""Shared wiring of the parent and child pipelines: tuning fan-out, fan-in, training, evaluation, registration."""

from typing import Any

from zenml.client import Client

from steps.evaluate import evaluate_model, register_model, report_drift
from steps.train import select_best, train_model, tune_trial


def step_ids(trials: int) -> list[str]:
    """The step ids of a training pipeline with `trials` tuning trials, in run order."""
    tuning = [f"tune_trial_{i}" for i in range(trials)]
    return [*tuning, "select_best", "train_model", "evaluate_model", "report_drift", "register_model"]


def train_stage(
    shard_set_id: str,
    view: dict[str, Any],
    train: dict[str, Any],
    tuning: dict[str, Any],
    trials: list[dict[str, Any]],
    gate: dict[str, Any],
    experiment_tracker: str,
    checkpoint_dir: str,
    fingerprint: dict[str, Any],
    init: dict[str, Any] | None = None,
) -> Any:
    """tune_trial_0..N-1 → select_best → train_model → evaluate_model → report_drift → register_model.

    With `init` naming a router version (a child), the trials and the training start from its `model` artifact.
    """
    shard_set = Client().get_artifact_version(shard_set_id)
    start = {"init_model": Client().get_artifact_version(init["artifact"])} if init and init.get("artifact") else {}
    tracked = {"experiment_tracker": experiment_tracker} if experiment_tracker else {}
    nested = {"settings": {"experiment_tracker": {"nested": True}}} if experiment_tracker else {}
    results = [
        tune_trial.with_options(**tracked, **nested)(
            shard_set=shard_set,
            view=view,
            train=train,
            tuning=tuning,
            index=i,
            trial=trial,
            **start,
            id=f"tune_trial_{i}",
        )
        for i, trial in enumerate(trials)
    ]
    _, best_params = select_best.with_options(**tracked)(trials=results)
    model, _ = train_model.with_options(**tracked)(
        shard_set=shard_set,
        view=view,
        train=train,
        best_params=best_params,
        checkpoint_dir=checkpoint_dir,
        init=init or {},
        **start,
    )
    evaluation, reference, current = evaluate_model.with_options(**tracked)(
        shard_set=shard_set, model=model, view=view, gate=gate
    )
    _, _, drift_summary = report_drift.with_options(**tracked)(reference_features=reference, current_features=current)
    register_model(evaluation=evaluation, drift_summary=drift_summary, fingerprint=fingerprint, init=init or {})
    return model
