"""Step: the staging tests (health, serving correctness, served sanity, bad input, latency, regression)."""

import logging
from dataclasses import asdict
from typing import Annotated, Any

from zenml import log_metadata, step

from fieldguide.config import from_dict
from fieldguide.deploy import DeployConfig, release_folder
from fieldguide.serving import Release, TwoStagePredictor
from fieldguide.shards import ShardSet
from fieldguide.staging import StagingReport, held_out_samples, production_reference, run_staging_tests
from steps.materializers import StagingReportMaterializer
from steps.registry import production_release


@step(enable_cache=False, output_materializers={"staging_report": StagingReportMaterializer})
def test_staging(
    release: Release, staging_server: dict[str, Any], shard_set: ShardSet, deploy: dict[str, Any]
) -> Annotated[StagingReport, "staging_report"]:
    """Check the staging server; the verdict decides promotion (failures are recorded, not raised here)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the checks
    cfg = from_dict(DeployConfig, deploy, "deploy")
    predictor = TwoStagePredictor(release_folder(release.id))
    live = production_release()
    production = production_reference(live, release_folder(live.id), shard_set) if live else None
    report = run_staging_tests(
        f"http://127.0.0.1:{staging_server['port']}",
        release.id,
        predictor,
        held_out_samples(shard_set, cfg.accuracy_sample),
        cfg,
        production=production,
    )
    log_metadata(metadata={"staging": {"passed": report.passed, "checks": [asdict(c) for c in report.checks]}})
    return report
