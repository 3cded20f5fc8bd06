"""Step: start the candidate bento as the staging server (phase 1 of the promotion routine)."""

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from zenml import step

from fieldguide.config import from_dict
from fieldguide.runconfig import DeployConfig
from fieldguide.serve.release import Release
from registry import promotion


@step(enable_cache=False)
def start_staging(
    release: Release, bento_tag: str, deploy: dict[str, Any], serving_dir: str
) -> Annotated[dict[str, Any], "staging_server"]:
    """`bentoml serve` on the staging port; pid and port are recorded in the serving state."""
    cfg = from_dict(DeployConfig, deploy, "deploy")
    return asdict(promotion.start_staging(release, bento_tag, cfg, Path(serving_dir)))
