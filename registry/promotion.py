"""The one promotion routine: start staging → test → start production → warm it up → switch → drain → record.

The deploy pipeline runs its phases as steps (`start_staging`, `test_staging`, `promote_release`); `rollback`
runs the same phases in one call, with the same budgets and checks, except the regression check against
production (going back to an older release is the point). On any failure production is untouched, staging is
stopped, and the release is recorded as failed with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldguide.errors import FieldguideError
from fieldguide.monitor.capture import staging_capture
from fieldguide.serve.release import BENTO_NAME, Release, write_stage
from fieldguide.serve.servers import (
    Server,
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


def fail(release_id: str, reason: str, folder: Path, rollback: bool = False) -> None:
    """Stop staging and record why the release did not go live; production is not touched.

    A release on its first rollout becomes failed; a rollback target keeps its place in the history (archived)
    and records why the rollback to it failed.
    """
    state = ServingState.load(folder)
    stop(state.staging)
    state.staging = None
    state.save(folder)
    if rollback:
        set_release(release_id, rollback_failure=reason)
        return
    mark_failed(release_id, reason)
    write_stage(folder, release_id, FAILED)


def start_staging(release: Release, bento: str, cfg: DeployConfig, folder: Path, rollback: bool = False) -> Server:
    """Phase 1: the release's bento on the staging port (replacing any earlier staging server)."""
    state = ServingState.load(folder)
    stop(state.staging)
    state.staging = None
    state.save(folder)
    try:
        capture = (monitoring_dir("staging"), staging_capture(cfg.capture))
        server = start_bento(bento, release.id, cfg.staging_port, folder / "logs", cfg.start_timeout_s, capture=capture)
    except FieldguideError as exc:
        fail(release.id, f"staging did not start: {exc}", folder, rollback)
        raise
    state.staging = server
    state.save(folder)
    print(f"staging: {release.id} on {server.url} (pid {server.pid})", flush=True)
    return server


def test_staging(
    release: Release, url: str, cfg: DeployConfig, shard_set: Any, compare_with_production: bool = True
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
        return run_staging_tests(
            url,
            release.id,
            TwoStagePredictor(release_folder(release.id)),
            held_out_samples(shard_set, cfg.accuracy_sample),
            cfg,
            production=production,
            compare_with_production=compare_with_production,
        )
    except Exception as exc:  # noqa: BLE001 - whatever broke, the verdict is "failed", with the reason
        report = StagingReport(release.id, url)
        report.checks.append(Check("staging tests", False, f"crashed: {type(exc).__name__}: {exc}"))
        print(f"  [FAIL] staging tests: crashed: {type(exc).__name__}: {exc}", flush=True)
        return report


def promote(release: Release, report: StagingReport, cfg: DeployConfig, folder: Path, rollback: bool = False) -> None:
    """Phase 3: on a passed report, a new production server, the gateway switched to it, the old one drained.

    Raises:
        FieldguideError: when the report failed or the production server could not start (recorded first).
    """
    print(report.text().splitlines()[0], flush=True)
    if not report.passed:
        fail(release.id, report.text(), folder, rollback)
        raise FieldguideError(f"release {release.id} failed its staging tests; production is unchanged")
    state = ServingState.load(folder)
    staging = state.staging
    if staging is None or staging.release != release.id or health(staging) != "healthy":
        fail(release.id, "the staging server stopped serving it before promotion", folder, rollback)
        raise FieldguideError(f"the staging server does not serve {release.id} any more; production is unchanged")
    from fieldguide.ports import free_port

    try:
        green = start_bento(
            staging.bento,
            release.id,
            free_port(),
            folder / "logs",
            cfg.start_timeout_s,
            supervised=True,
            capture=(monitoring_dir("production"), cfg.capture),
        )
    except FieldguideError as exc:
        fail(release.id, f"the production server did not start: {exc}", folder, rollback)
        raise
    previous = production_release()
    warm_up(green.url)
    switch_production(state, folder, green, cfg.production_port)
    stop(staging)
    state.staging = None
    state.save(folder)
    mark_promoted(release)
    if previous is not None and previous.id != release.id:
        write_stage(folder, previous.id, ARCHIVED)
    write_stage(folder, release.id, PRODUCTION)
    print(f"production: {release.id} at http://127.0.0.1:{cfg.production_port}", flush=True)


def roll_out(
    release: Release, bento: str, cfg: DeployConfig, shard_set: Any, folder: Path, compare_with_production: bool
) -> StagingReport:
    """All three phases in one call (without the production comparison: a rollback)."""
    rollback = not compare_with_production
    server = start_staging(release, bento, cfg, folder, rollback)
    report = test_staging(release, server.url, cfg, shard_set, compare_with_production)
    promote(release, report, cfg, folder, rollback)
    return report


def rollback(cfg: DeployConfig, folder: Path, shard_set_of: Any, expect: str = "") -> str:
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
        target = rollback_target(current)
        bento = f"{BENTO_NAME}:{target.id}"
        try:
            bentoml.bentos.get(bento)
        except bentoml.exceptions.NotFound:
            raise FieldguideError(f"the bento {bento} of {target.id} is gone; cannot roll back") from None
        print(f"rolling back: {current.id} → {target.id}", flush=True)
        roll_out(target, bento, cfg, shard_set_of(target.dataset_version), folder, compare_with_production=False)
        set_release(current.id, rolled_back_at=now())
        return target.id


def serve_production(cfg: DeployConfig, folder: Path) -> str:
    """Make sure the production release is served (gateway + backend); return its URL."""
    from fieldguide.ports import free_port

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
