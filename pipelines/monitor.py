"""The monitor pipeline: a window of production traffic → one assessment per model → verdicts on the registry."""

from typing import Any

from zenml import pipeline

from steps.monitor import assess_model, collect_traffic, record_verdicts


def assess_step(model: str) -> str:
    """The step id of a model's assessment (assess_router, assess_child_ferns …)."""
    return f"assess_{model.replace('-', '_')}"


def step_ids(models: list[str]) -> list[str]:
    """The step ids of a monitor run over `models`, in run order."""
    return ["collect_traffic", *(assess_step(m) for m in models), "record_verdicts"]


@pipeline(name="fieldguide_monitor", enable_cache=False)
def monitor_pipeline(
    monitor_dir: str,
    models: list[str],
    since: str,
    until: str,
    release_id: str,
    thresholds: dict[str, Any],
    workspace: str,
) -> None:
    """The router on all traffic, each child on the requests routed to it, against the release's reference."""
    predictions, feedback, window = collect_traffic(
        monitor_dir=monitor_dir, since=since, until=until, release_id=release_id
    )
    assessments = [
        assess_model(
            predictions=predictions,
            feedback=feedback,
            window=window,
            model=model,
            thresholds=thresholds,
            workspace=workspace,
            id=assess_step(model),
        )[1]
        for model in models
    ]
    record_verdicts(assessments=assessments, window=window)
