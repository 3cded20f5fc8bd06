"""Dispatch of `--pipeline monitor`: the production release's window, one monitor-pipeline run, the verdicts printed."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldguide.errors import FieldguideError
from fieldguide.runconfig import load_run_config


def workspace_dir(given: str) -> Path:
    """The Evidently workspace: the config's, else <FIELDGUIDE_HOME>/evidently."""
    return Path(given) if given else Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "evidently"


def run_monitor(root: Path, since: str | None = None, config: str | None = None, until: str = "") -> dict[str, Any]:
    """Monitor the production release over [since, until) and print each model's verdict; return the verdicts.

    An empty window says so and runs nothing (no verdict is recorded). On the SageMaker stack, a `schedule` in
    configs/monitor_sagemaker.yaml makes this create the schedule instead (each run then watches its own window).
    """
    from zenml.client import Client

    from fieldguide.keys import release_members
    from fieldguide.monitor.reference import load_reference
    from fieldguide.monitor.verdict import Assessment
    from fieldguide.monitor.window import answers_in, parse_since
    from fieldguide.serve.servers import release_folder
    from pipelines.monitor import assess_step, monitor_pipeline, step_ids
    from pipelines.runner import active_cloud, pipeline_errors, zenml_options
    from registry.promotion import monitoring_dir
    from registry.releases import production_release

    rc = load_run_config(root, "monitor", config, cloud=active_cloud())
    cfg = rc.params
    release = production_release()
    if release is None:
        raise FieldguideError("no release in production: nothing to monitor (run `make run`, or approve versions)")
    load_reference(release_folder(release.id))  # a release assembled before monitoring cannot be judged: say so now
    since = since or cfg.since
    folder = monitoring_dir("production")
    models = [key.name for key in release_members(release.groups)]
    options = zenml_options(rc, step_ids(models))
    if "schedule" in options:
        from zenml.config.schedule import Schedule

        options["schedule"] = Schedule(**options["schedule"])
    else:
        now = datetime.now(UTC)
        start, end = parse_since(since, now), parse_since(until, now) if until else now
        answered, _ = answers_in(folder, release.id, start, end)
        if not answered:
            print(
                f"no production traffic of release {release.id} between {start.isoformat(timespec='seconds')} and "
                f"{end.isoformat(timespec='seconds')}: nothing to judge, no verdict recorded",
                flush=True,
            )
            return {}
        since, until = start.isoformat(), end.isoformat()
    with pipeline_errors():
        run = monitor_pipeline.with_options(**options)(
            monitor_dir=str(folder),
            models=models,
            since=since,
            until=until,
            release_id="" if "schedule" in options else release.id,
            thresholds=asdict(cfg.thresholds),
            workspace=str(workspace_dir(cfg.workspace)),
        )
    if run is None or "schedule" in options:
        print(f"monitor scheduled: {options.get('schedule')}", flush=True)
        return {}
    run = Client().get_pipeline_run(run.id)
    verdicts = run.steps["record_verdicts"].outputs["verdicts"][0].load()
    print(f"run {run.name}: {run.status.value}; verdicts of release {release.id}:", flush=True)
    for model in models:
        assessment = run.steps[assess_step(model)].outputs["assessment"][0].load()
        print(f"  {Assessment.from_dict(assessment).line()}", flush=True)
    print(f"reports: the ZenML dashboard (run {run.name}, assess_* steps), and `make monitor-ui` (Evidently)")
    return verdicts
