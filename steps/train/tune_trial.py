"""Step: one hyperparameter trial (a few epochs on a subset); fanned out as tune_trial_0..N-1."""

from typing import Annotated, Any

from zenml import step

from fieldguide.config import from_dict
from fieldguide.data.shards import ShardSet
from fieldguide.keys import ModelKey
from fieldguide.train.fit import TrainParams
from fieldguide.train.job import train_on_view, view_from_spec
from fieldguide.train.models import ModelBundle
from fieldguide.train.tuning import TrialResult, TuneConfig, apply_params
from steps.materializers import TrialResultMaterializer
from steps.tracking import log_metrics, log_params


@step(output_materializers=TrialResultMaterializer)
def tune_trial(
    shard_set: ShardSet,
    view: dict[str, Any],
    train: dict[str, Any],
    tuning: dict[str, Any],
    index: int,
    trial: dict[str, Any],
    init_model: ModelBundle | None = None,
) -> Annotated[TrialResult, "trial"]:
    """Train `trial`'s parameters for tuning.epochs on tuning.train_subset and score on tuning.val_subset.

    With `init_model` (a child starting from the router) the trial starts from its backbone, as training will.
    """
    cfg = from_dict(TuneConfig, tuning, "tuning")
    params = apply_params(from_dict(TrainParams, train, "train"), {**trial, "epochs": cfg.epochs, "patience": 0})
    log_params({"trial": index, "dataset_version": shard_set.dataset_version, **trial})
    _, result = train_on_view(
        shard_set,
        view_from_spec(shard_set, view),
        params,
        ModelKey.from_view(view).name,
        train_subset=cfg.train_subset,
        val_subset=cfg.val_subset,
        on_epoch=lambda epoch, metrics: log_metrics(metrics, step=epoch),
        init=init_model,
    )
    last = result.history[-1]
    return TrialResult(
        index, trial, result.best_val_acc, last.get("val_loss", float("nan")), last["images_per_s"], result.history
    )
