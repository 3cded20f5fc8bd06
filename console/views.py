"""What the console's pages and API show and do, through the same registry, rollout and review functions as the CLI.

Every function here returns plain JSON-able data; the pages render it and the API returns it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from console.config import ConsoleConfig
from console.jobs import RunRequest, rollback_argv, rollout_argv, run_argv
from console.store import Job, Store, User
from fieldguide.errors import FieldguideError

# How long a decision waits for a rollout holding the registry before it answers 409 (try again).
LOCK_WAIT_S = 120


class NotFound(FieldguideError):
    """An unknown model, version, request or run (HTTP 404)."""


class BadRequest(FieldguideError):
    """A request missing what it must say, such as a decision's note (HTTP 400)."""


@dataclass(frozen=True)
class Origin:
    """Where an action came from, for the audit log."""

    # The client's address.
    address: str
    # "api" (a bearer token) or "browser" (a session).
    channel: str

    def __str__(self) -> str:
        return f"{self.channel} {self.address}"


def versions() -> list[dict[str, Any]]:
    """Every model version: stage, approval, who, key metrics (`run.py models`)."""
    from registry.versions import models_rows

    return models_rows()


def _version(model: str, version: str) -> Any:
    from registry.approvals import ApprovalError
    from registry.versions import find_version

    try:
        return find_version(model, version)
    except ApprovalError as exc:
        raise NotFound(str(exc)) from exc


_EXPERIMENTS: dict[tuple[str, str], str] = {}


def _mlflow_experiment(tracking_uri: str, run_id: str) -> str:
    """The experiment id of an MLflow run ('' while the store does not answer; answers are remembered)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    key = (tracking_uri, run_id)
    if key not in _EXPERIMENTS:
        try:
            _EXPERIMENTS[key] = str(MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
        except (MlflowException, OSError):
            return ""
    return _EXPERIMENTS[key]


def version_detail(model: str, version: str, cfg: ConsoleConfig) -> dict[str, Any]:
    """One version: gate verdict, metrics, approval and rollout records, monitoring verdict, links.

    Raises:
        NotFound: for an unknown model or version.
    """
    from registry.versions import approval_of, rollout_note

    found = _version(model, version)
    meta = found.run_metadata
    evaluation = found.get_artifact("evaluation")
    run_id = str(evaluation.producer_pipeline_run_id) if evaluation is not None else ""
    mlflow_run, tracking = str(meta.get("mlflow_run_id") or ""), str(meta.get("mlflow_tracking_uri") or "")
    experiment = _mlflow_experiment(tracking, mlflow_run) if mlflow_run and tracking else ""
    approval = approval_of(found)
    return {
        "model": model,
        "version": f"v{found.number}",
        "id": str(found.id),
        "stage": found.stage or "",
        "created": found.created.strftime("%Y-%m-%d %H:%M"),
        "dataset_version": str(meta.get("dataset_version", "")),
        "gate": meta.get("gate") or {},
        "metrics": {k.removeprefix("test_"): v for k, v in meta.items() if k.startswith("test_")},
        "approval": approval,
        "pending": approval.get("state") in ("pending", "gate_failed"),
        "rollout": rollout_note(found),
        "monitoring": meta.get("monitoring") or {},
        "has_report": evaluation is not None,
        "has_drift": found.get_artifact("drift_report") is not None,
        "zenml_run_url": f"{cfg.dashboard_url}/projects/default/runs/{run_id}" if run_id else "",
        "mlflow_run_url": f"{cfg.mlflow_url}/#/experiments/{experiment}/runs/{mlflow_run}" if experiment else "",
    }


def _artifact(model: str, version: str, name: str, what: str) -> Any:
    found = _version(model, version).get_artifact(name)
    if found is None:
        raise NotFound(f"{model} {version} has no {what}")
    return found.load()


def evaluation_report(model: str, version: str) -> str:
    """The version's evaluation report page (metrics, per-class table, confusion matrix, reliability diagram).

    Raises:
        NotFound: for an unknown version, or one without an evaluation.
    """
    from fieldguide.evaluate.report import render_report

    return render_report(_artifact(model, version, "evaluation", "evaluation"))[0]


def drift_report(model: str, version: str) -> str:
    """The version's Evidently drift report (train split against test split), as Evidently rendered it.

    Raises:
        NotFound: for an unknown version, or one without the report.
    """
    return str(_artifact(model, version, "drift_report", "Evidently report"))


def decide(
    store: Store, cfg: ConsoleConfig, user: User, model: str, version: str, action: str, note: str, origin: Origin
) -> dict[str, Any]:
    """Approve or reject a version as `user`; an approval queues its rollout (staging, tests, production).

    Raises:
        NotFound: for an unknown model or version.
        ApprovalError: when the registry refuses the decision (already decided, gate failed, duplicate).
    """
    from registry.lock import registry_lock
    from registry.versions import record_decision

    found = _version(model, version)
    if not note.strip():
        raise BadRequest("a decision needs a note: why")
    label = f"{model} v{found.number}"
    with registry_lock(timeout_s=LOCK_WAIT_S, what=f"{action} {label} from the console"):
        decided = record_decision(model, str(found.number), action, user.name, note.strip())
    record = decided.run_metadata["approval"]
    store.audit(user.name, action, label, note.strip(), str(origin))
    result: dict[str, Any] = {"model": model, "version": f"v{found.number}", "approval": record}
    if action == "approve":
        job = store.enqueue("rollout", {"model": model, "version": f"v{found.number}"}, rollout_argv(cfg), user.name)
        store.audit(user.name, "rollout queued", label, f"run {job.id}", str(origin))
        result["rollout_run"] = job.id
    return result


def releases() -> list[dict[str, str]]:
    """Every release, newest first: status, model versions, created, approved by, end-to-end accuracy."""
    from registry.releases import releases_rows

    return releases_rows()[::-1]


def rollback(store: Store, cfg: ConsoleConfig, user: User, origin: Origin) -> Job:
    """Queue production's rollback to the previous release.

    Raises:
        FieldguideError: when nothing is in production or there is no release to go back to.
    """
    from registry.releases import production_release, rollback_target

    live = production_release()
    if live is None:
        raise FieldguideError("no release in production: nothing to roll back")
    target = rollback_target(live)
    job = store.enqueue("rollback", {"from": live.id, "to": target.id}, rollback_argv(cfg, live.id), user.name)
    store.audit(user.name, "rollback queued", live.id, f"to {target.id}; run {job.id}", str(origin))
    return job


def dataset_groups(root: Path) -> list[str]:
    """The groups of the current dataset ([] before the first data run)."""
    from pipelines.runner import resolve_dataset

    try:
        return list(resolve_dataset(root, None, None, quiet=True).groups)
    except FieldguideError:
        return []


def start_run(store: Store, cfg: ConsoleConfig, root: Path, user: User, req: RunRequest, origin: Origin) -> Job:
    """Check a run request and queue it.

    Raises:
        RunRequestError: for an unknown pipeline or group, or an option the pipeline does not take.
    """
    argv = run_argv(req, cfg, dataset_groups(root) if req.pipeline == "child" else [])
    spec = {k: v for k, v in req.__dict__.items() if v}
    job = store.enqueue("pipeline", spec, argv, user.name)
    store.audit(
        user.name, "run queued", req.pipeline + (f" {req.group}" if req.group else ""), f"run {job.id}", str(origin)
    )
    return job


def pipeline_runs(cfg: ConsoleConfig, limit: int = 30) -> list[dict[str, str]]:
    """The newest pipeline runs of the ZenML store: name, pipeline, status, created, dashboard link."""
    from zenml.client import Client

    return [_run_row(run, cfg) for run in Client().list_pipeline_runs(sort_by="desc:created", size=limit)]


def _run_row(run: Any, cfg: ConsoleConfig) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "name": run.name,
        "pipeline": run.pipeline.name if run.pipeline else "",
        "status": run.status.value,
        "created": run.created.strftime("%Y-%m-%d %H:%M:%S"),
        "url": f"{cfg.dashboard_url}/projects/default/runs/{run.id}",
    }


def pipeline_run(run_id: str, cfg: ConsoleConfig, lines: int) -> dict[str, Any]:
    """One run of the ZenML store: status, its steps' statuses and the tail of its logs (client and steps).

    Raises:
        NotFound: for an id the store does not know.
    """
    from uuid import UUID

    from zenml.client import Client
    from zenml.log_stores.artifact.artifact_log_store import fetch_log_records

    client = Client()
    try:
        run = client.get_pipeline_run(UUID(run_id))
    except (KeyError, ValueError) as exc:
        raise NotFound(f"no pipeline run {run_id!r}") from exc
    store = client.active_stack.artifact_store
    streams = list(run.log_collection or [])
    steps = []
    for name, step in run.steps.items():
        steps.append({"name": name, "status": step.status.value})
        streams += [logs for logs in step.log_collection or [] if logs.source == "step"]
    records = []
    for logs in streams:
        if logs.uri:
            records += [(str(r.timestamp), r.message) for r in fetch_log_records(store, logs.uri, 100_000)]
    tail = [f"{at[:19]}  {message}" for at, message in sorted(records)[-lines:]]
    return {**_run_row(run, cfg), "steps": steps, "log_tail": tail}


def monitoring() -> list[dict[str, Any]]:
    """Each model's newest monitor verdict (on its production version, else on its newest judged version)."""
    from registry.versions import list_versions, model_names

    rows = []
    for name in model_names():
        judged = [v for v in list_versions(name) if v.run_metadata.get("monitoring")]
        live = [v for v in judged if (v.stage or "") == "production"]
        chosen = (live or judged or [None])[-1]
        record = chosen.run_metadata["monitoring"] if chosen is not None else {}
        rows.append({"model": name, "version": f"v{chosen.number}" if chosen else "", **record})
    return rows


def review_queue(show_all: bool = False) -> list[dict[str, Any]]:
    """The review queue in review order, each entry with the species of its release to pick from."""
    from fieldguide.review.queue import release_taxonomies
    from pipelines.review_runs import queue_rows

    taxonomy_of = release_taxonomies()
    rows = []
    for entry in queue_rows(show_all):
        row = entry.to_dict() | {"photo": f"/review/{entry.request_id}/photo"}  # served by the console, not a path
        try:
            row["choices"] = taxonomy_of(entry.release)
        except (FieldguideError, OSError):
            row["choices"] = {}
        rows.append(row)
    return rows


def review_photo(request_id: str) -> Path:
    """The kept photo of a queued request.

    Raises:
        NotInQueue: for a request not in the queue (HTTP 404).
    """
    from fieldguide.review.queue import find_entry
    from pipelines.review_runs import queue_rows
    from registry.promotion import monitoring_dir

    return find_entry(queue_rows(True), request_id, monitoring_dir("production")).photo


def label(
    store: Store, user: User, request_id: str, species: str, group: str, new_species: str, origin: Origin
) -> dict[str, Any]:
    """Label a queued photo as `user` (the same checks as `run.py review label`).

    Raises:
        NotInQueue: for a request not in the queue (HTTP 404).
        FieldguideError: for a species or group the release does not know.
    """
    from fieldguide.review.queue import LabelRequest, ReviewStore, record_label, release_taxonomies
    from registry.promotion import monitoring_dir

    req = LabelRequest(request_id, user.name, species=species, group=group, new_species=new_species)
    made, replaced = record_label(ReviewStore(), monitoring_dir("production"), req, release_taxonomies(), "console")
    what = f"new species {made.species}" if made.new_species else made.species
    store.audit(user.name, "label", request_id, f"{what} ({made.group})", str(origin))
    return {
        "request_id": request_id,
        "species": made.species,
        "group": made.group,
        "by": made.by,
        "replaces": replaced.species if replaced else "",
    }
