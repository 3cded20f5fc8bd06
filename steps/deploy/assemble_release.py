"""Step: assemble a candidate release, evaluate it two-stage, store it with its monitoring reference for BentoML."""

from datetime import UTC, datetime
from typing import Annotated, Any

from zenml import step

from fieldguide.config import from_dict
from fieldguide.data.shards import ShardSet
from fieldguide.evaluate.two_stage import TwoStageTable, two_stage_hits
from fieldguide.keys import ModelKey, release_members
from fieldguide.runconfig import DeployConfig
from fieldguide.serve.predictor import save_release_model
from fieldguide.serve.release import Release
from registry.releases import record_release
from registry.versions import get_version, load_model
from steps.materializers import ReleaseMaterializer


@step(enable_cache=False, output_materializers={"release": ReleaseMaterializer})
def assemble_release(
    shard_set: ShardSet, release_id: str, versions: dict[str, str], approved_by: str, deploy: dict[str, Any]
) -> Annotated[Release, "release"]:
    """Load the versions (model name → version id), measure the two-stage table, save fieldguide-release:<id>."""
    deploy_config = from_dict(DeployConfig, deploy, "deploy")
    config = deploy_config.serving
    loaded = {name: get_version(vid) for name, vid in versions.items()}
    bundles = {name: load_model(version) for name, version in loaded.items()}
    groups = list(bundles[ModelKey.router().name].meta.classes)
    children = {
        key.group: bundles[key.name] for key in release_members(groups) if key.kind == "child" and key.name in bundles
    }
    route_k = min(config.route_k, len(groups))  # the served routing depth (the predictor clamps it too)
    table = TwoStageTable.of(two_stage_hits(bundles[ModelKey.router().name], children, shard_set, (route_k,)))
    release = Release(
        id=release_id,
        versions={name: f"v{version.number}" for name, version in loaded.items()},
        version_ids=dict(versions),
        groups=groups,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        approved_by=approved_by,
        serving=config,
        evaluation={name: value for name, value in table.rows()},
        dataset_version=shard_set.dataset_version,
    )
    tag = save_release_model(release, bundles, shard_set, deploy_config.capture.components)
    print(f"release {release.id}: {release.versions}; BentoML model {tag}")
    for name, value in table.rows():
        print(f"  {name:<40} {value:.3f}")
    record_release(release)
    return release
