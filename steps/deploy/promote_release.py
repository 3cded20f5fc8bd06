"""Step: promote a release that passed staging (blue/green), or stop staging and mark it failed."""

from pathlib import Path
from typing import Any

from zenml import step

from fieldguide.config import from_dict
from fieldguide.deploy import DeployConfig, ServingState, free_port, start_bento, stop, switch_production
from fieldguide.errors import FieldguideError
from fieldguide.serving import Release
from fieldguide.staging import StagingReport
from steps.registry import mark_failed, mark_promoted


@step(enable_cache=False)
def promote_release(release: Release, staging_report: StagingReport, deploy: dict[str, Any], serving_dir: str) -> None:
    """Promote on a passed staging report, else stop staging and mark the release failed.

    Passed: a new production server of the tested bento starts, the gateway switches to it once it is healthy,
    the old one stops after draining, staging stops, model stages move. Failed: production untouched, staging
    stopped, release marked failed, the step fails.
    """
    cfg = from_dict(DeployConfig, deploy, "deploy")
    folder = Path(serving_dir)
    state = ServingState.load(folder)
    print(staging_report.text().splitlines()[0])
    if not staging_report.passed:
        stop(state.staging)
        state.staging = None
        state.save(folder)
        mark_failed(release, staging_report.text())
        raise FieldguideError(f"release {release.id} failed its staging tests; production is unchanged")
    staging = state.staging
    if staging is None or staging.release != release.id:
        raise FieldguideError(f"the staging server does not serve {release.id} any more; production is unchanged")
    green = start_bento(staging.bento, release.id, free_port(), folder / "logs", cfg.start_timeout_s)
    switch_production(state, folder, green, cfg)
    stop(staging)
    state.staging = None
    state.save(folder)
    mark_promoted(release)
    print(f"production: {release.id} at http://127.0.0.1:{cfg.production_port}")
