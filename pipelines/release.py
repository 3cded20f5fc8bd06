"""The release-evaluation pipeline: the two-stage table of a router version plus one child version per group."""

from zenml import pipeline
from zenml.client import Client

from steps.evaluate import evaluate_release


@pipeline(name="fieldguide_release_eval", enable_cache=False)
def release_eval_pipeline(shard_set_id: str, versions: dict[str, str], ks: list[int], flat_version: str = "") -> None:
    """Evaluate one release end to end on the test split."""
    evaluate_release(
        shard_set=Client().get_artifact_version(shard_set_id), versions=versions, ks=ks, flat_version=flat_version
    )
