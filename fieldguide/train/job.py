"""Train one model on a view of a shard set: the job that tuning trials, full training and benches share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fieldguide.data.loader import ShardDataset, make_loader
from fieldguide.data.shards import ShardSet, View, child_view, flat_view, parent_view
from fieldguide.keys import ModelKey
from fieldguide.train.fit import FitResult, Location, TrainParams, fit, seed_everything
from fieldguide.train.models import (
    ModelBundle,
    ModelMeta,
    create_model,
    data_config_for,
    eval_transform,
    init_backbone,
    train_transform,
)


@dataclass
class TrainHistory:
    """Per-epoch metrics of a training run (the `training_history` artifact)."""

    model_name: str
    history: list[dict[str, float]]
    best_epoch: int
    resumed_from: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


def view_from_spec(shard_set: ShardSet, spec: dict[str, Any]) -> View:
    """Build a view from a JSON spec (fieldguide.keys.ModelKey.view): parent, child or flat."""
    key = ModelKey.from_view(spec)
    if key.kind == "router":
        return parent_view(shard_set, spec.get("per_group") or None)
    if key.kind == "child":
        return child_view(shard_set, key.group)
    return flat_view(shard_set)


def train_on_view(
    shard_set: ShardSet,
    view: View,
    params: TrainParams,
    name: str,
    *,
    train_subset: float = 1.0,
    val_subset: float = 1.0,
    checkpoint: Location | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    device: torch.device | None = None,
    init: ModelBundle | None = None,
) -> tuple[ModelBundle, FitResult]:
    """Create the timm model for `view`, train it on the train split and select it on the val split.

    With `init` (a child starting from the router) the backbone starts from its weights and the head is fresh.
    With `params.gpus` > 1 (and no `wrap` yet) the work goes to fieldguide.train.distributed, one process per GPU.

    Raises:
        FieldguideError: when `init` is another architecture than `params.arch`.
    """
    if params.gpus > 1 and wrap is None:
        from fieldguide.train.distributed import train_distributed

        return train_distributed(
            shard_set, view, params, name, world_size=params.gpus, backend="nccl",
            train_subset=train_subset, val_subset=val_subset, checkpoint=checkpoint, init=init,
        )  # fmt: skip
    seed_everything(params.seed)  # the initial weights too: same seed, same data, same model
    model = create_model(params.arch, len(view.labels), params.pretrained_file, params.drop_rate)
    if init is not None:
        init_backbone(model, init, name)
    dcfg = data_config_for(model, params.img_size)
    train_ds = ShardDataset(
        shard_set,
        "train",
        view,
        train_transform(dcfg, params.aug_scale_min, params.color_jitter),
        shuffle=True,
        seed=params.seed,
        subset=train_subset,
        rank=rank,
        world_size=world_size,
    )
    val_ds = ShardDataset(shard_set, "val", view, eval_transform(dcfg), subset=val_subset)
    result = fit(
        model,
        make_loader(train_ds, params.batch_size, params.workers, drop_last=False),
        make_loader(val_ds, params.batch_size * 2, params.workers),
        params,
        checkpoint=checkpoint,
        on_epoch=on_epoch,
        progress=progress,
        device=device,
        wrap=wrap,
        is_main=rank == 0,
    )
    meta = ModelMeta(
        name=name,
        arch=params.arch,
        num_classes=len(view.labels),
        classes=list(view.labels),
        data_config=dcfg,
        dataset_version=shard_set.dataset_version,
        group=view.group,
        params=asdict(params),
        metrics={"val_acc": result.best_val_acc, "best_epoch": float(result.best_epoch)},
    )
    return ModelBundle(model.cpu().eval(), meta), result
