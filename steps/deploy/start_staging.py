"""Step: start the candidate bento as the staging server (replacing any earlier staging server)."""

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from zenml import step

from fieldguide.config import from_dict
from fieldguide.deploy import DeployConfig, ServingState, start_bento, stop
from fieldguide.serving import Release


@step(enable_cache=False)
def start_staging(
    release: Release, bento_tag: str, deploy: dict[str, Any], serving_dir: str
) -> Annotated[dict[str, Any], "staging_server"]:
    """`bentoml serve` on the staging port; pid and port are recorded in the serving state."""
    cfg = from_dict(DeployConfig, deploy, "deploy")
    folder = Path(serving_dir)
    state = ServingState.load(folder)
    stop(state.staging)
    state.staging = None
    state.save(folder)
    server = start_bento(bento_tag, release.id, cfg.staging_port, folder / "logs", cfg.start_timeout_s)
    state.staging = server
    state.save(folder)
    print(f"staging: {release.id} on {server.url} (pid {server.pid})")
    return asdict(server)
