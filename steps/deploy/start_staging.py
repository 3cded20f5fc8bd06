"""Step: start the candidate bento as the staging server (phase 1 of the promotion routine)."""

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
    """The candidate on the target's staging: `bentoml serve` on the staging port (and, on SageMaker, its endpoint)."""
    cfg = from_dict(DeployConfig, deploy, "deploy")
    return promotion.start_staging(release, bento_tag, promotion.target_for(cfg, Path(serving_dir)))
