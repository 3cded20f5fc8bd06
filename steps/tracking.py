"""MLflow logging from steps, active only when the stack's MLflow experiment tracker opened a run for the step."""

from __future__ import annotations

from typing import Any


def _active() -> bool:
    import mlflow

    return mlflow.active_run() is not None


def log_params(params: dict[str, Any]) -> None:
    """Log parameters to the step's MLflow run."""
    if _active():
        import mlflow

        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log metrics (per epoch when `step` is given)."""
    if _active():
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_bytes(data: bytes | str, name: str) -> None:
    """Attach a file (plot, HTML report) to the step's MLflow run."""
    if not _active():
        return
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        mlflow.log_artifact(str(path))


def run_id() -> str:
    """The step's MLflow run id, or ''."""
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else ""
