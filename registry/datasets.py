"""Which dataset a run uses: a dataset version by id, or the one the last data pipeline run produced."""

from __future__ import annotations

from typing import Any

from fieldguide.errors import FieldguideError
from registry.versions import client

DATA_PIPELINE = "fieldguide_data"


def shard_set_of_run(run: Any) -> Any:
    """The `shard_set` artifact version of a data pipeline run (cached runs included)."""
    run = client().get_pipeline_run(run.id)
    return run.steps["build_shards"].outputs["shard_set"][0]


def last_data_run() -> Any:
    """The newest data pipeline run, cached or not.

    Raises:
        FieldguideError: when no data pipeline has run yet.
    """
    from zenml.enums import ExecutionStatus

    runs = client().list_pipeline_runs(pipeline_name=DATA_PIPELINE, sort_by="desc:created", size=20)
    for run in runs:
        if run.status in (ExecutionStatus.COMPLETED, ExecutionStatus.CACHED):
            return run
    raise FieldguideError("no dataset yet: run `python run.py --pipeline data --catalog PATH` first")


def last_data_run_shard_set() -> Any:
    """The `shard_set` of the newest data pipeline run, cached or not (see last_data_run)."""
    return shard_set_of_run(last_data_run())


def catalog_of_run(run: Any) -> str:
    """The catalog a data pipeline run read."""
    return str(client().get_pipeline_run(run.id).steps["ingest_catalog"].config.parameters["catalog"])


def manifest_of_run(run: Any) -> Any:
    """The dataset manifest (fieldguide.data.manifest.Manifest) a data pipeline run wrote or reused."""
    return client().get_pipeline_run(run.id).steps["version_dataset"].outputs["manifest"][0].load()


def qa_of_run(run: Any) -> Any:
    """The QA result (fieldguide.data.qa.QAResult) of a data pipeline run."""
    return client().get_pipeline_run(run.id).steps["validate_images"].outputs["qa_report"][0].load()


def shard_set_by_version(dataset_version: str) -> Any:
    """The newest `shard_set` artifact of a dataset version (a unique prefix of its id is enough).

    Raises:
        FieldguideError: naming the known dataset versions when none or several match.
    """
    found: dict[str, Any] = {}
    for artifact in client().list_artifact_versions(artifact="shard_set", sort_by="desc:created", size=1000):
        version = str(artifact.run_metadata.get("dataset_version", ""))
        found.setdefault(version, artifact)  # newest first: the first one seen is the newest
    matches = [v for v in found if v.startswith(dataset_version)]
    if len(matches) == 1:
        return found[matches[0]]
    if not matches:
        known = ", ".join(sorted(found)) or "none yet"
        raise FieldguideError(f"no dataset version {dataset_version!r}; known: {known}")
    raise FieldguideError(f"dataset version {dataset_version!r} is ambiguous: {', '.join(sorted(matches))}")
