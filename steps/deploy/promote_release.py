"""Step: promote a release that passed staging, or stop staging and record it failed (phase 3)."""

from pathlib import Path
from typing import Any

from zenml import step

from fieldguide.config import from_dict
from fieldguide.runconfig import DeployConfig
from fieldguide.serve.release import Release
from fieldguide.serve.staging import StagingReport
from registry import promotion


@step(enable_cache=False)
def promote_release(
    release: Release,
    staging_server: dict[str, Any],
    staging_report: StagingReport,
    deploy: dict[str, Any],
    serving_dir: str,
) -> None:
    """Production takes a release that passed staging; a failed one is recorded and the step fails.

    Passed: locally a new server behind the gateway, the old one drained; on SageMaker the production endpoint
    updated blue/green. Failed: production untouched, staging torn down, the release recorded as failed.
    """
    target = promotion.target_for(from_dict(DeployConfig, deploy, "deploy"), Path(serving_dir))
    promotion.promote(release, staging_server, staging_report, target)
