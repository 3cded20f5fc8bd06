"""Step: split, preprocess and pack a dataset version into WebDataset shards."""

import tempfile
from pathlib import Path
from typing import Annotated, Any

from zenml import get_step_context, step

from fieldguide.config import ShardConfig, SplitConfig, from_dict
from fieldguide.data.catalog import is_remote
from fieldguide.data.manifest import Manifest
from fieldguide.data.shards import ShardSet
from fieldguide.data.shards import build_shards as pack_shards
from steps.materializers import ShardSetMaterializer


@step(output_materializers=ShardSetMaterializer)
def build_shards(
    manifest: Manifest, split: dict[str, Any], shards: dict[str, Any], layout: int = 1
) -> Annotated[ShardSet, "shard_set"]:
    """Write shards straight into the artifact store when it is local, else via a temporary folder.

    `layout` (fieldguide.data.shards.LAYOUT) is part of the cache key: a shard set cached by an older layout is
    rebuilt rather than reused without what the new one records.
    """
    target = get_step_context().get_output_artifact_uri("shard_set")
    out = Path(tempfile.mkdtemp(prefix="fieldguide-shards-")) if is_remote(target) else Path(target)
    shard_set = pack_shards(
        manifest, from_dict(SplitConfig, split, "split"), from_dict(ShardConfig, shards, "shards"), out
    )
    for problem in shard_set.skipped:
        print(f"skipped: {problem}")
    return shard_set
