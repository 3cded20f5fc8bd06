"""Rollout commands behind run.py: deploy, rollback, status, stop, watch, serve."""

from __future__ import annotations

import dataclasses
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldguide.config import from_dict
from fieldguide.deploy import (
    BENTO_NAME,
    RELEASE_MODEL,
    DeployConfig,
    ServingState,
    free_port,
    health,
    release_folder,
    start_bento,
    stop,
    switch_production,
)
from fieldguide.errors import FieldguideError
from fieldguide.registry import APPROVED, PENDING
from fieldguide.serving import ServingConfig, TwoStagePredictor, read_release
from pipelines.runner import config_path, known_groups, latest_shard_set_id, pipeline_errors, split_run_config


def serving_dir() -> Path:
    """Where pids, ports, logs and the gateway's upstream file live (under FIELDGUIDE_HOME)."""
    return Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "serving"


def deploy_parameters(root: Path, config: str | None) -> tuple[DeployConfig, dict[str, Any]]:
    """The validated deploy config and the serving config it carries into releases."""
    params, _ = split_run_config(config_path(root, "deploy", config))
    cfg = from_dict(DeployConfig, params, "parameters")
    serving = dataclasses.asdict(from_dict(ServingConfig, cfg.serving, "parameters.serving"))
    return cfg, serving


def new_release_id() -> str:
    """A sortable release id (also a valid BentoML tag version)."""
    return datetime.now(UTC).strftime("r%Y%m%d-%H%M%S")


def newest_approved(groups: list[str]) -> tuple[dict[str, str], list[str]]:
    """For each release model: the newest approved version if it is newer than production, else production.

    Returns the version ids by model name and who approved the new versions.
    """
    from steps.registry import ApprovalError, approval_of, list_versions, require_version

    versions, approvers = {}, []
    for name in ["router"] + [f"child-{g}" for g in groups]:
        approved = [v for v in list_versions(name) if approval_of(v).get("state") == APPROVED]
        try:
            production = require_version(name, "production")
        except ApprovalError:
            production = None
        if approved and (production is None or approved[-1].number > production.number):
            versions[name] = str(approved[-1].id)
            approvers.append(approval_of(approved[-1]).get("by", ""))
        elif production is not None:
            versions[name] = str(production.id)
        else:
            raise FieldguideError(
                f"no approved version of {name} yet: `python run.py approve {name} VERSION --by NAME`"
            )
    return versions, approvers


def run_deploy(root: Path, config: str | None = None, versions: dict[str, str] | None = None, by: str = "") -> Any:
    """Run the deploy pipeline for a candidate release (default: newest approved versions over production)."""
    from zenml import Model

    from pipelines.deploy import deploy_pipeline

    cfg, serving = deploy_parameters(root, config)
    shard_set_id = latest_shard_set_id()
    approvers: list[str] = [by] if by else []
    if versions is None:
        versions, approvers = newest_approved(known_groups(shard_set_id))
    release_id = new_release_id()
    print(f"deploying release {release_id}", flush=True)
    model = Model(name=RELEASE_MODEL, version=release_id, description="Two-stage releases: router + children")
    options: dict[str, Any] = {"model": model}
    with pipeline_errors():
        return deploy_pipeline.with_options(**options)(
            shard_set_id=shard_set_id,
            release_id=release_id,
            versions=versions,
            approved_by=", ".join(sorted({a for a in approvers if a})),
            serving=serving,
            deploy=dataclasses.asdict(cfg),
            serving_dir=str(serving_dir()),
            root=str(root),
        )


def deploy_after_approval(root: Path, model: str, version: Any, by: str, config: str | None = None) -> None:
    """Roll out a freshly approved version with the production versions of the other models, when all exist."""
    from steps.registry import candidate_versions, mark_rollout

    mark_rollout(version.id, f"approved by {by}")
    groups = known_groups(latest_shard_set_id())
    if model not in ["router"] + [f"child-{g}" for g in groups]:
        print(f"{model} is not part of the two-stage release; nothing to deploy")
        return
    versions = candidate_versions(model, version, groups)
    if versions is None:
        print("not deploying yet: a first release needs an approved router and an approved child for every group")
        return
    run_deploy(root, config, versions=versions, by=by)


def rollback(root: Path, config: str | None = None) -> str:
    """Switch production back to the release promoted before the current one, by the staging → swap path."""
    import bentoml

    from fieldguide.staging import held_out_samples, run_staging_tests
    from steps.registry import mark_promoted

    cfg, _ = deploy_parameters(root, config)
    folder = serving_dir()
    state = ServingState.load(folder)
    if state.production is None or len(state.history) < 2:
        raise FieldguideError("nothing to roll back to: fewer than two releases have been in production here")
    current = state.production.release
    previous = next((h for h in reversed(state.history) if h["release"] != current), None)
    if previous is None:
        raise FieldguideError(f"every recorded release is {current}; nothing to roll back to")
    try:
        bentoml.bentos.get(previous["bento"])
    except bentoml.exceptions.NotFound:
        raise FieldguideError(
            f"the bento {previous['bento']} of {previous['release']} is gone; cannot roll back"
        ) from None
    print(f"rolling back: {current} → {previous['release']}", flush=True)
    stop(state.staging)
    state.staging = start_bento(previous["bento"], previous["release"], cfg.staging_port, folder / "logs", 180)
    state.save(folder)
    release_dir = release_folder(previous["release"])
    release = read_release(release_dir)
    from zenml.client import Client

    shard_set = Client().get_artifact_version(latest_shard_set_id()).load()
    report = run_staging_tests(
        state.staging.url,
        release.id,
        TwoStagePredictor(release_dir),
        held_out_samples(shard_set, cfg.accuracy_sample),
        cfg,
        compare_with_production=False,
    )
    if not report.passed:
        stop(state.staging)
        state.staging = None
        state.save(folder)
        raise FieldguideError(f"rollback target {release.id} failed its staging tests; production is unchanged")
    green = start_bento(previous["bento"], release.id, free_port(), folder / "logs", cfg.start_timeout_s)
    switch_production(state, folder, green, cfg)
    stop(state.staging)
    state.staging = None
    state.save(folder)
    mark_promoted(release)
    return release.id


def status_rows() -> list[dict[str, str]]:
    """Staging, production (gateway + backend) with release, port, pid and health."""
    state = ServingState.load(serving_dir())
    rows = []
    for role, server, path in (
        ("production (gateway)", state.gateway, "/_gateway"),
        ("production (backend)", state.production, "/readyz"),
        ("staging", state.staging, "/readyz"),
    ):
        rows.append(
            {
                "role": role,
                "release": server.release if server else "",
                "url": server.url if server else "",
                "pid": str(server.pid) if server else "",
                "health": health(server, path),
            }
        )
    return rows


def stop_all() -> list[str]:
    """Stop every server this machine's fieldguide started; return what was stopped."""
    folder = serving_dir()
    state = ServingState.load(folder)
    stopped = []
    for role in ("gateway", "production", "staging"):
        server = getattr(state, role)
        if server is not None:
            stop(server)
            stopped.append(f"{role} (pid {server.pid}, port {server.port})")
            setattr(state, role, None)
    state.save(folder)
    return stopped


def serve_production(root: Path, config: str | None = None) -> str:
    """Make sure the production release is being served (gateway + backend); return its URL."""
    from steps.registry import production_release

    cfg, _ = deploy_parameters(root, config)
    folder = serving_dir()
    state = ServingState.load(folder)
    if health(state.gateway, "/_gateway") == "healthy" and health(state.production) == "healthy":
        return state.gateway.url if state.gateway else ""
    live = production_release()
    if live is None:
        raise FieldguideError("no release in production yet: approve model versions, or run `make run`")
    stop(state.production)
    server = start_bento(f"{BENTO_NAME}:{live.id}", live.id, free_port(), folder / "logs", cfg.start_timeout_s)
    state.production = None
    state.history = [h for h in state.history if h["release"] != live.id]
    switch_production(state, folder, server, cfg)
    return f"http://127.0.0.1:{cfg.production_port}"


def watch(root: Path, interval_s: float, once: bool = False, config: str | None = None) -> None:
    """Poll the registry for approvals not yet rolled out (CLI or dashboard: an `approved` tag counts) and deploy."""
    from steps.registry import (
        ApprovalError,
        approval_of,
        list_versions,
        mark_rollout,
        record_decision,
        require_version,
    )

    while True:
        groups = known_groups(latest_shard_set_id())
        for name in ["router"] + [f"child-{g}" for g in groups]:
            try:
                live = require_version(name, "production").number
            except ApprovalError:
                live = 0
            for version in list_versions(name):
                approved = approval_of(version).get("state") == APPROVED or "approved" in {t.name for t in version.tags}
                if not approved or version.run_metadata.get("rollout"):
                    continue
                if version.number <= live:
                    mark_rollout(version.id, f"superseded by production v{live}")
                    continue
                if approval_of(version).get("state") != APPROVED:
                    try:  # approved by tag in the dashboard: record it, under the same gate rules as the CLI
                        record_decision(name, str(version.number), "approve", "dashboard", "tagged `approved`")
                    except ApprovalError as exc:
                        print(f"watch: {name} v{version.number} tagged approved but refused: {exc}", flush=True)
                        mark_rollout(version.id, f"refused: {exc}")
                        continue
                print(f"watch: {name} v{version.number} approved; rolling out", flush=True)
                try:
                    with pipeline_errors():
                        by = approval_of(version).get("by") or "dashboard"
                        deploy_after_approval(root, name, version, by, config)
                except FieldguideError as exc:
                    print(f"watch: rollout of {name} v{version.number} failed: {exc}", flush=True)
        if once:
            return
        time.sleep(interval_s)


def approve_pending_and_deploy(root: Path, by: str, note: str = "") -> str:
    """Approve each release model's newest pending version, deploy once, and make sure production is served."""
    from steps.registry import approval_of, list_versions, mark_rollout, record_decision

    approved = []
    for name in ["router"] + [f"child-{g}" for g in known_groups(latest_shard_set_id())]:
        pending = [v for v in list_versions(name) if approval_of(v).get("state") == PENDING]
        if pending:
            record_decision(name, str(pending[-1].number), "approve", by, note)
            mark_rollout(pending[-1].id, f"approved by {by}")
            approved.append(f"{name} v{pending[-1].number}")
    if approved:
        print(f"approved by {by}: {', '.join(approved)}", flush=True)
        run_deploy(root, by=by)
    else:
        print("nothing pending: every model version is already decided", flush=True)
    return serve_production(root)
