"""Step: two-stage evaluation of a release (router + one child per group) on the whole test split."""

from typing import Annotated, Any
from uuid import UUID

from zenml import log_metadata, step
from zenml.client import Client

from fieldguide.errors import FieldguideError
from fieldguide.models import ModelBundle
from fieldguide.shards import ShardSet
from fieldguide.twostage import TwoStageTable
from fieldguide.twostage import evaluate_release as evaluate
from steps.materializers import TwoStageTableMaterializer


def load_version(version_id: str) -> tuple[Any, ModelBundle]:
    """A model version and its `model` artifact, loaded."""
    version = Client().get_model_version(model_version_name_or_number_or_id=UUID(version_id))
    artifact = version.get_model_artifact("model")
    if artifact is None:
        raise FieldguideError(f"{version.model.name} v{version.number} has no `model` artifact")
    return version, artifact.load()


@step(output_materializers={"two_stage_evaluation": TwoStageTableMaterializer})
def evaluate_release(
    shard_set: ShardSet, versions: dict[str, str], ks: list[int], flat_version: str = ""
) -> Annotated[TwoStageTable, "two_stage_evaluation"]:
    """Router accuracy, oracle child accuracy, end-to-end accuracy per routing k, and the flat baseline if given.

    Args:
        shard_set: the dataset version whose test split is used.
        versions: model name (router, child-<group>) → model version id.
        ks: routing depths to report.
        flat_version: model version id of a flat classifier on all species, or ''.
    """
    loaded = {name: load_version(vid) for name, vid in versions.items()}
    router = loaded["router"][1]
    children = {}
    for group in router.meta.classes:
        if f"child-{group}" not in loaded:
            raise FieldguideError(f"the release has no child model for group {group!r}")
        children[group] = loaded[f"child-{group}"][1]
    flat = load_version(flat_version)[1] if flat_version else None
    table = evaluate(router, children, shard_set, tuple(ks), flat)
    table.versions = {name: f"v{version.number}" for name, (version, _) in loaded.items()}
    record = {name: round(value, 4) for name, value in table.rows()} | {"versions": table.versions}
    for version, _ in loaded.values():
        log_metadata(metadata={"two_stage_evaluation": record}, model_version_id=version.id)
    for name, value in table.rows():
        print(f"  {name:<40} {value:.3f}")
    return table
