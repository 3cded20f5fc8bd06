"""Step: `bentoml build` of the two-stage service pinned to one release."""

from pathlib import Path
from typing import Annotated

from zenml import log_metadata, step

from fieldguide.serve.release import Release
from fieldguide.serve.servers import build_bento as build


@step(enable_cache=False)
def build_bento(release: Release, root: str) -> Annotated[str, "bento_tag"]:
    """Build bentos/bentofile.yaml from the repository at `root`; return the bento tag."""
    tag = build(Path(root), release.id)
    print(f"built bento {tag}")
    log_metadata(metadata={"bento": tag}, infer_model=True)
    return tag
