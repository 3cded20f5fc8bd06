"""MLflow logging from steps, active only when the stack's MLflow experiment tracker opened a run for the step."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path
from typing import Any


def _mlflow() -> Any:
    """The mlflow module when a run is active for this step, else None (mlflow is imported lazily: it is slow).

    The run's experiment is tagged as model training, so the MLflow UI opens it on its runs.
    """
    import mlflow

    from stacks import EXPERIMENT_KIND

    run = mlflow.active_run()
    if run is None:
        return None
    _tag_experiment(run.info.experiment_id, *EXPERIMENT_KIND)
    return mlflow


@cache
def _tag_experiment(experiment_id: str, key: str, value: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_experiment_tag(experiment_id, key, value)


def log_params(params: dict[str, Any]) -> None:
    """Log parameters to the step's MLflow run."""
    if mlflow := _mlflow():
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log metrics (per epoch when `step` is given)."""
    if mlflow := _mlflow():
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_bytes(data: bytes | str, name: str) -> None:
    """Attach a file (plot, HTML report) to the step's MLflow run."""
    if mlflow := _mlflow():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
            mlflow.log_artifact(str(path))


def run_id() -> str:
    """The step's MLflow run id, or ''."""
    mlflow = _mlflow()
    return mlflow.active_run().info.run_id if mlflow else ""
