"""Step: the staging tests over HTTP (health, known answers, bad input, latency, accuracy)."""

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from fieldguide.config import from_dict
from fieldguide.deploy import RELEASE_MODEL, DeployConfig
from fieldguide.serving import Release, TwoStagePredictor
from fieldguide.shards import ShardSet
from fieldguide.staging import StagingReport, held_out_samples, run_staging_tests
from steps.materializers import StagingReportMaterializer
from steps.registry import production_release


@step(enable_cache=False, output_materializers={"staging_report": StagingReportMaterializer})
def test_staging(
    release: Release, staging_server: dict[str, Any], shard_set: ShardSet, deploy: dict[str, Any]
) -> Annotated[StagingReport, "staging_report"]:
    """Check the staging server; the verdict decides promotion (failures are recorded, not raised here)."""
    import bentoml

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the checks
    cfg = from_dict(DeployConfig, deploy, "deploy")
    predictor = TwoStagePredictor(Path(bentoml.models.get(f"{RELEASE_MODEL}:{release.id}").path))
    production = production_release()
    same_split = production is not None and production.dataset_version == release.dataset_version
    report = run_staging_tests(
        f"http://127.0.0.1:{staging_server['port']}",
        release.id,
        predictor,
        held_out_samples(shard_set, cfg.accuracy_sample),
        release.end_to_end_accuracy() or 0.0,
        cfg,
        production_accuracy=production.end_to_end_accuracy() if same_split and production else None,
    )
    log_metadata(metadata={"staging": {"passed": report.passed, "checks": [asdict(c) for c in report.checks]}})
    return report
