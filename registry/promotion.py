"""The one promotion routine: start staging → test → put production on it → record, on either target.

The deploy pipeline runs its phases as steps (`start_staging`, `test_staging`, `promote_release`); `rollback`
runs the same phases in one call, with the same budgets and checks, except the regression check against
production (going back to an older release is the point). On any failure production is untouched, staging is
torn down, and the release is recorded as failed with the reason. Where releases are served is the target's
(fieldguide.serve.targets): this machine's servers, or SageMaker endpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from fieldguide.errors import FieldguideError
from fieldguide.serve.release import BENTO_NAME, Release, write_stage
from fieldguide.serve.servers import (
    ServingState,
    health,
    release_folder,
    start_bento,
    stop,
    switch_production,
    warm_up,
)
from registry.lock import registry_lock

if TYPE_CHECKING:
    from fieldguide.runconfig import DeployConfig
    from fieldguide.serve.staging import StagingReport
    from fieldguide.serve.targets import Target
from registry.releases import (
    ARCHIVED,
    FAILED,
    PRODUCTION,
    mark_failed,
    mark_promoted,
    now,
    production_release,
    rollback_target,
    set_release,
)


def serving_dir() -> Path:
    """Where pids, ports, logs, stages and the gateway's upstream file live (under FIELDGUIDE_HOME)."""
    return Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "serving"


def monitoring_dir(role: str) -> Path:
    """Where the servers of a role (production, staging) record their answers (under FIELDGUIDE_HOME)."""
    return Path(os.environ.get("FIELDGUIDE_HOME", ".fieldguide")) / "monitor" / role


def forget_held_photos() -> int:
    """Delete the photos held for feedback (servers stopped: no feedback can reach them); return how many."""
    import shutil

    count = 0
    for role in ("production", "staging"):
        hold = monitoring_dir(role) / "hold"
        count += sum(1 for _ in hold.glob("*")) if hold.is_dir() else 0
        shutil.rmtree(hold, ignore_errors=True)
    return count


def target_for(cfg: DeployConfig, folder: Path) -> Target:
    """The configured rollout target (`cfg.target`): this machine's servers, or SageMaker endpoints."""
    from fieldguide.serve.targets import LocalTarget, SageMakerTarget

    local = LocalTarget(cfg, folder, monitoring_dir("production").parent)
    if cfg.target == "sagemaker":
        from fieldguide.serve.endpoints import Endpoints

        return SageMakerTarget(local, Endpoints(cfg.sagemaker))
    return local


def fail(release_id: str, reason: str, target: Target, rollback: bool = False) -> None:
    """Tear staging down and record why the release did not go live; production is not touched.

    A release on its first rollout becomes failed; a rollback target keeps its place in the history (archived)
    and records why the rollback to it failed.
    """
    try:
        target.stop_staging(release_id)
    except Exception as exc:  # noqa: BLE001 - the failure is recorded even when tearing staging down failed
        print(f"warning: staging of {release_id} not torn down: {type(exc).__name__}: {exc}", flush=True)
    if rollback:
        set_release(release_id, rollback_failure=reason)
        return
    mark_failed(release_id, reason)
    write_stage(target.folder, release_id, FAILED)


def start_staging(release: Release, bento: str, target: Target, rollback: bool = False) -> dict[str, Any]:
    """Phase 1: the release's bento on staging (replacing any earlier staging); what runs where."""
    try:
        return target.start_staging(release, bento)
    except FieldguideError as exc:
        fail(release.id, f"staging did not start: {exc}", target, rollback)
        raise


def test_staging(
    release: Release,
    staging: dict[str, Any],
    cfg: DeployConfig,
    shard_set: Any,
    target: Target,
    compare_with_production: bool = True,
) -> StagingReport:
    """Phase 2: the staging checks; a check that crashes (server died, timeout) fails the report, never raises."""
    from fieldguide.serve.predictor import TwoStagePredictor
    from fieldguide.serve.staging import (
        Check,
        StagingReport,
        held_out_samples,
        production_reference,
        run_staging_tests,
    )

    try:
        production = None
        live = production_release() if compare_with_production else None
        if live is not None and live.id != release.id:
            production = production_reference(live, release_folder(live.id), shard_set)
        # Every target serves the candidate's bento on a local staging server too: the malformed requests go there.
        with httpx.Client(base_url=f"http://127.0.0.1:{staging['port']}", timeout=30) as local:
            return run_staging_tests(
                target.transport(staging, local),
                local,
                release.id,
                TwoStagePredictor(release_folder(release.id)),
                held_out_samples(shard_set, cfg.accuracy_sample),
                cfg,
                production,
                compare_with_production,
            )
    except Exception as exc:  # noqa: BLE001 - whatever broke, the verdict is "failed", with the reason
        report = StagingReport(release.id, str(staging.get("endpoint") or staging.get("port", "")))
        report.checks.append(Check("staging tests", False, f"crashed: {type(exc).__name__}: {exc}"))
        print(f"  [FAIL] staging tests: crashed: {type(exc).__name__}: {exc}", flush=True)
        return report


def promote(
    release: Release, staging: dict[str, Any], report: StagingReport, target: Target, rollback: bool = False
) -> str:
    """Phase 3: on a passed report, production serves the release (the target's switch); where it answers.

    Raises:
        FieldguideError: when the report failed, staging stopped serving, or production did not take the release
            (each recorded first; production keeps serving what it served).
    """
    print(report.text().splitlines()[0], flush=True)
    if not report.passed:
        fail(release.id, report.text(), target, rollback)
        raise FieldguideError(f"release {release.id} failed its staging tests; production is unchanged")
    if not target.staging_serves(release):
        fail(release.id, "the staging server stopped serving it before promotion", target, rollback)
        raise FieldguideError(f"staging does not serve {release.id} any more; production is unchanged")
    previous = production_release()
    try:
        where = target.go_live(release, staging)
    except FieldguideError as exc:
        fail(release.id, f"production did not take it: {exc}", target, rollback)
        raise
    mark_promoted(release)
    folder = target.folder
    if previous is not None and previous.id != release.id:
        write_stage(folder, previous.id, ARCHIVED)
    write_stage(folder, release.id, PRODUCTION)
    print(f"production: {release.id} at {where}", flush=True)
    return where


def roll_out(
    release: Release, bento: str, cfg: DeployConfig, shard_set: Any, target: Target, compare_with_production: bool
) -> StagingReport:
    """All three phases in one call (without the production comparison: a rollback)."""
    rollback = not compare_with_production
    staging = start_staging(release, bento, target, rollback)
    report = test_staging(release, staging, cfg, shard_set, target, compare_with_production)
    promote(release, staging, report, target, rollback)
    return report


def rollback(cfg: DeployConfig, target: Target, shard_set_of: Any, expect: str = "") -> str:
    """Production back to the release promoted before the current one; returns its id.

    Walks the registry's history: the release rolled back from is never a target again, so two rollbacks go two
    releases back. `shard_set_of(dataset_version)` gives the held-out images for the target's checks. With
    `expect`, only when that release is still the one in production (a queued rollback is never a second one).
    """
    import bentoml

    with registry_lock(what="rollback"):
        current = production_release()
        if current is None:
            raise FieldguideError("nothing to roll back: no release is in production")
        if expect and current.id != expect:
            raise FieldguideError(f"not rolling back: production is {current.id} now, not {expect}")
        previous = rollback_target(current)
        bento = f"{BENTO_NAME}:{previous.id}"
        try:
            bentoml.bentos.get(bento)
        except bentoml.exceptions.NotFound:
            raise FieldguideError(f"the bento {bento} of {previous.id} is gone; cannot roll back") from None
        print(f"rolling back: {current.id} → {previous.id}", flush=True)
        roll_out(previous, bento, cfg, shard_set_of(previous.dataset_version), target, compare_with_production=False)
        set_release(current.id, rolled_back_at=now())
        return previous.id


def serve_production(cfg: DeployConfig, folder: Path) -> str:
    """Make sure the production release is served (gateway + backend); return its URL.

    On the SageMaker target production is the endpoint, which SageMaker keeps serving: its name is returned.
    """
    from fieldguide.ports import free_port

    if cfg.target == "sagemaker":
        return f"SageMaker endpoint {cfg.sagemaker.production_endpoint} (`python run.py status`)"

    state = ServingState.load(folder)
    if health(state.gateway, "/_gateway") == "healthy" and health(state.production) == "healthy":
        return state.gateway.url if state.gateway else ""
    live = production_release()
    if live is None:
        raise FieldguideError("no release in production yet: approve model versions, or run `make run`")
    stop(state.production)
    bento = f"{BENTO_NAME}:{live.id}"
    capture = (monitoring_dir("production"), cfg.capture)
    server = start_bento(
        bento, live.id, free_port(), folder / "logs", cfg.start_timeout_s, supervised=True, capture=capture
    )
    state.production = None
    warm_up(server.url)
    switch_production(state, folder, server, cfg.production_port)
    write_stage(folder, live.id, PRODUCTION)
    return f"http://127.0.0.1:{cfg.production_port}"
