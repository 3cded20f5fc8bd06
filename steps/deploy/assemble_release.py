"""Step: assemble a candidate release from model versions, evaluate it two-stage, store it for BentoML."""

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from zenml import log_metadata, step

from fieldguide.config import from_dict
from fieldguide.deploy import save_release_model
from fieldguide.serving import Release, ServingConfig
from fieldguide.shards import ShardSet
from fieldguide.twostage import evaluate_release
from steps.evaluate.evaluate_release import load_version
from steps.materializers import ReleaseMaterializer


@step(enable_cache=False, output_materializers={"release": ReleaseMaterializer})
def assemble_release(
    shard_set: ShardSet, release_id: str, versions: dict[str, str], approved_by: str, serving: dict[str, Any]
) -> Annotated[Release, "release"]:
    """Load the versions (model name → version id), measure the two-stage table, save fieldguide-release:<id>."""
    loaded = {name: load_version(vid) for name, vid in versions.items()}
    router = loaded["router"][1]
    children = {g: loaded[f"child-{g}"][1] for g in router.meta.classes}
    config = from_dict(ServingConfig, serving, "serving")
    table = evaluate_release(router, children, shard_set, (config.route_k,))
    release = Release(
        id=release_id,
        versions={name: f"v{version.number}" for name, (version, _) in loaded.items()},
        version_ids=dict(versions),
        groups=list(router.meta.classes),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        approved_by=approved_by,
        status="candidate",
        serving=config,
        evaluation={name: value for name, value in table.rows()},
        dataset_version=shard_set.dataset_version,
    )
    tag = save_release_model(release, {name: bundle for name, (_, bundle) in loaded.items()})
    print(f"release {release.id}: {release.versions}; BentoML model {tag}")
    for name, value in table.rows():
        print(f"  {name:<40} {value:.3f}")
    log_metadata(metadata={"release": asdict(release)}, infer_model=True)
    return release
