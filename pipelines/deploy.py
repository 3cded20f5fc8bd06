"""The deploy pipeline: candidate release → bento → staging → staging tests → blue/green promotion."""

from typing import Any

from zenml import pipeline
from zenml.client import Client

from steps.deploy import assemble_release, build_bento, promote_release, start_staging, test_staging


@pipeline(name="fieldguide_deploy", enable_cache=False)
def deploy_pipeline(
    shard_set_id: str,
    release_id: str,
    versions: dict[str, str],
    approved_by: str,
    deploy: dict[str, Any],
    serving_dir: str,
    root: str,
) -> None:
    """Roll one release out; on any staging failure production is left as it was."""
    shard_set = Client().get_artifact_version(shard_set_id)
    release = assemble_release(
        shard_set=shard_set, release_id=release_id, versions=versions, approved_by=approved_by, deploy=deploy
    )
    bento_tag = build_bento(release=release, root=root)
    staging = start_staging(release=release, bento_tag=bento_tag, deploy=deploy, serving_dir=serving_dir)
    report = test_staging(
        release=release, staging_server=staging, shard_set=shard_set, deploy=deploy, serving_dir=serving_dir
    )
    promote_release(
        release=release, staging_server=staging, staging_report=report, deploy=deploy, serving_dir=serving_dir
    )
