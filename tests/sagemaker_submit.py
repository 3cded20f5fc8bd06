"""Submit fieldguide's child pipeline to the SageMaker stack (run by tests/test_sagemaker_orchestrator.py).

Its environment (set by the test) points ZenML at a throwaway ZenML server and every AWS client at moto. It
registers stacks/sagemaker.yaml as is, saves a tiny `shard_set` artifact to the S3 artifact store, runs the child
pipeline through the production path (pipelines.runner.prepare_model / run_prepared, configs/child_sagemaker.yaml
merged because the active orchestrator is SageMaker) with the Docker build skipped, and prints one JSON line.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from zenml import save_artifact
    from zenml.client import Client
    from zenml.utils import source_utils

    # The code archive uploaded to the artifact store is the repository (not the folder of this script).
    source_utils.set_custom_source_root(str(ROOT))

    from fieldguide.data.shards import ClassMaps, ShardSet
    from fieldguide.keys import ModelKey
    from pipelines.runner import Dataset, prepare_model, run_prepared
    from stacks import expand_env, load_stack_spec, register_stack, validate_stack_spec
    from steps.materializers import ShardSetMaterializer

    client = Client()
    assert not client.zen_store.is_local_store(), "the SageMaker orchestrator refuses a local store or local server"
    client.create_secret("fieldguide_mlflow", values={"token": "test-token"})  # {{fieldguide_mlflow.token}}
    spec = expand_env(load_stack_spec(ROOT / "stacks/sagemaker.yaml"))
    validate_stack_spec(spec)
    client.activate_stack(register_stack(spec))

    # A tiny shard set: the child pipeline looks its artifact up when it compiles; no step runs here.
    shards = Path(tempfile.mkdtemp())
    names = {split: [f"{split}-000000.tar"] for split in ("train", "val", "test")}
    for name in [n for ns in names.values() for n in ns] + ["classes.json"]:
        (shards / name).write_bytes(b"{}")
    species = {"Aloe vera": "succulents", "Agave americana": "succulents"}
    shard_set = ShardSet(
        location=str(shards),
        dataset_version="test-v1",
        shards=names,
        counts={split: {"succulents": 2} for split in names},
        classes=ClassMaps(species=sorted(species), groups=["succulents"], species_group=species),
        store_size=0,
    )
    dataset = Dataset.of(save_artifact(shard_set, name="shard_set", materializer=ShardSetMaterializer))

    prepared = prepare_model(ROOT, ModelKey.child("succulents"), None, dataset)
    settings = prepared.zenml.setdefault("settings", {})
    # The given image, used as is: no Docker, no CodeBuild.
    settings["docker"] = {"skip_build": True, "parent_image": os.environ["FIELDGUIDE_TEST_IMAGE"]}
    # Return once the SageMaker execution has started (never poll it).
    settings.setdefault("orchestrator.sagemaker", {})["synchronous"] = False
    run = run_prepared(prepared, dataset, no_cache=True)

    snapshot = Client().get_pipeline_run(run.id).snapshot
    print(
        "RESULT "
        + json.dumps(
            {
                "execution_arn": str(run.run_metadata["pipeline_execution_arn"]),
                "code_path": snapshot.code_path,
                "steps": {name: step.spec.upstream_steps for name, step in snapshot.step_configurations.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
