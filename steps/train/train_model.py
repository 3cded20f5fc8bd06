"""Step: full training with the best parameters, checkpointed every epoch and resumable after a crash."""

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from zenml import ArtifactConfig, log_metadata, step
from zenml.client import Client
from zenml.enums import ArtifactType

from fieldguide.config import from_dict
from fieldguide.data.shards import ShardSet
from fieldguide.evaluate.plots import training_curves
from fieldguide.fingerprint import Init
from fieldguide.keys import ModelKey
from fieldguide.train.fit import Location, TrainParams, checkpoint_file, remove_checkpoint
from fieldguide.train.job import TrainHistory, train_on_view, view_from_spec
from fieldguide.train.models import ModelBundle
from fieldguide.train.tuning import apply_params
from steps.materializers import ModelBundleMaterializer, TrainHistoryMaterializer
from steps.tracking import log_bytes, log_metrics, log_params, run_id


def checkpoint_root(configured: str) -> Location:
    """The configured checkpoint folder, else <artifact store>/checkpoints: local, or remote (s3://…) on SageMaker.

    In the artifact store a training job that is stopped and started again (spot interruption, a crash, a rerun)
    finds its last epoch, wherever it runs.
    """
    store = configured or f"{Client().active_stack.artifact_store.path.rstrip('/')}/checkpoints"
    return store if "://" in store else Path(store)


@step(output_materializers={"model": ModelBundleMaterializer, "training_history": TrainHistoryMaterializer})
def train_model(
    shard_set: ShardSet,
    view: dict[str, Any],
    train: dict[str, Any],
    best_params: dict[str, Any],
    checkpoint_dir: str = "",
    init: dict[str, Any] | None = None,
    init_model: ModelBundle | None = None,
) -> tuple[
    Annotated[ModelBundle, ArtifactConfig(name="model", artifact_type=ArtifactType.MODEL)],
    Annotated[TrainHistory, "training_history"],
]:
    """Train on the full train split with the tuned parameters; metrics per epoch go to MLflow.

    `init` says where the weights start (fieldguide.fingerprint.Init); `init_model` is the router it names, if any.
    """
    params = apply_params(from_dict(TrainParams, train, "train"), best_params)
    name = ModelKey.from_view(view).name
    start = Init.from_dict(init or {})
    ckpt = checkpoint_file(checkpoint_root(checkpoint_dir), name, shard_set.dataset_version, params, start.pin())
    print(f"checkpoints: {ckpt}; weights start from {start.describe()}")
    values = asdict(params)
    log_params({"model": name, "dataset_version": shard_set.dataset_version, "init": start.describe(), **values})
    bundle, result = train_on_view(
        shard_set,
        view_from_spec(shard_set, view),
        params,
        name,
        checkpoint=ckpt,
        on_epoch=lambda epoch, metrics: log_metrics(metrics, step=epoch),
        init=init_model,
    )
    bundle.meta.init = start.to_dict()
    if params.gpus > 1:  # DDP ranks run in their own processes: their epochs reach MLflow afterwards
        for epoch, metrics in enumerate(result.history):
            log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
    history = TrainHistory(name, result.history, result.best_epoch, result.resumed_from, values)
    log_bytes(training_curves(result.history, f"{name}: training curves"), "training_curves.png")
    log_metadata(
        metadata={
            "val_acc": result.best_val_acc,
            "dataset_version": shard_set.dataset_version,
            "mlflow_run_id": run_id(),
            "resumed_from_epoch": result.resumed_from or 0,
        }
    )
    log_metadata(metadata={"arch": bundle.meta.arch}, infer_model=True)  # a child starting from it must share it
    remove_checkpoint(ckpt)
    return bundle, history
