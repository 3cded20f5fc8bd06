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
def promote_release(release: Release, staging_report: StagingReport, deploy: dict[str, Any], serving_dir: str) -> None:
    """Passed: a new production server, the gateway switched to it once healthy, the old one drained, stages moved.

    Failed: production untouched, staging stopped, release recorded as failed, the step fails.
    """
    promotion.promote(release, staging_report, from_dict(DeployConfig, deploy, "deploy"), Path(serving_dir))
