"""Step: the staging checks (phase 2 of the promotion routine); failures are recorded, not raised."""

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from fieldguide.config import from_dict
from fieldguide.data.shards import ShardSet
from fieldguide.runconfig import DeployConfig
from fieldguide.serve.release import Release
from fieldguide.serve.staging import StagingReport
from registry import promotion
from steps.materializers import StagingReportMaterializer


@step(enable_cache=False, output_materializers={"staging_report": StagingReportMaterializer})
def test_staging(
    release: Release, staging_server: dict[str, Any], shard_set: ShardSet, deploy: dict[str, Any], serving_dir: str
) -> Annotated[StagingReport, "staging_report"]:
    """Health, serving correctness, served sanity, bad input, latency, regression against production."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the checks
    cfg = from_dict(DeployConfig, deploy, "deploy")
    target = promotion.target_for(cfg, Path(serving_dir))
    report = promotion.test_staging(release, staging_server, cfg, shard_set, target)
    log_metadata(metadata={"staging": {"passed": report.passed, "checks": [asdict(c) for c in report.checks]}})
    return report
