"""Step: two-stage evaluation of a release (router + one child per group) on the whole test split."""

from typing import Annotated

from zenml import log_metadata, step

from fieldguide.data.shards import ShardSet
from fieldguide.evaluate.two_stage import TwoStageTable, two_stage_hits
from fieldguide.keys import ModelKey
from registry.versions import get_version, load_model
from steps.materializers import TwoStageTableMaterializer


@step(output_materializers={"two_stage_evaluation": TwoStageTableMaterializer})
def evaluate_release(
    shard_set: ShardSet, versions: dict[str, str], ks: list[int], flat_version: str = ""
) -> Annotated[TwoStageTable, "two_stage_evaluation"]:
    """Router accuracy, oracle child accuracy, end-to-end accuracy per routing k, and the flat baseline if given.

    Args:
        shard_set: the dataset version whose test split is used; every model's classes must match it.
        versions: model name (see fieldguide.keys.ModelKey) → model version id.
        ks: routing depths to report.
        flat_version: model version id of a flat classifier on all species, or ''.
    """
    loaded = {ModelKey.parse(name): get_version(vid) for name, vid in versions.items()}
    bundles = {key: load_model(version) for key, version in loaded.items()}
    children = {key.group: bundle for key, bundle in bundles.items() if key.kind == "child"}
    flat = load_model(get_version(flat_version)) if flat_version else None
    table = TwoStageTable.of(two_stage_hits(bundles[ModelKey.router()], children, shard_set, tuple(ks), flat))
    table.versions = {key.name: f"v{version.number}" for key, version in loaded.items()}
    record = {name: round(value, 4) for name, value in table.rows()} | {"versions": table.versions}
    for version in loaded.values():
        log_metadata(metadata={"two_stage_evaluation": record}, model_version_id=version.id)
    for name, value in table.rows():
        print(f"  {name:<40} {value:.3f}")
    return table
