"""Train one model on a view of a shard set: the job that tuning trials, full training and benches share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fieldguide.errors import FieldguideError
from fieldguide.evaluation import GateConfig
from fieldguide.loader import ShardDataset, make_loader
from fieldguide.models import ModelBundle, ModelMeta, create_model, data_config_for, eval_transform, train_transform
from fieldguide.shards import ShardSet, View, child_view, flat_view, parent_view
from fieldguide.training import FitResult, TrainParams, fit
from fieldguide.tuning import TuneConfig


@dataclass
class TrainHistory:
    """Per-epoch metrics of a training run (the `training_history` artifact)."""

    model_name: str
    history: list[dict[str, float]]
    best_epoch: int
    resumed_from: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


def view_from_spec(shard_set: ShardSet, spec: dict[str, Any]) -> View:
    """Build a view from a JSON spec: {"kind": "parent", "per_group": N} | {"kind": "child", "group": G} | flat."""
    kind = spec.get("kind")
    if kind == "parent":
        return parent_view(shard_set, spec.get("per_group") or None)
    if kind == "child":
        return child_view(shard_set, spec["group"])
    if kind == "flat":
        return flat_view(shard_set)
    raise FieldguideError(f"unknown view kind {kind!r} (parent, child or flat)")


def model_name(spec: dict[str, Any]) -> str:
    """Registry name of the model trained on a view: router, child-<group> or flat."""
    return {"parent": "router", "flat": "flat"}.get(spec["kind"]) or f"child-{spec['group']}"


def train_on_view(
    shard_set: ShardSet,
    view: View,
    params: TrainParams,
    name: str,
    *,
    train_subset: float = 1.0,
    val_subset: float = 1.0,
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    device: torch.device | None = None,
) -> tuple[ModelBundle, FitResult]:
    """Create the timm model for `view`, train it on the train split and select it on the val split.

    With `params.gpus` > 1 (and no `wrap` yet) the work goes to fieldguide.distributed, one process per GPU.
    """
    if params.gpus > 1 and wrap is None:
        from fieldguide.distributed import train_distributed

        return train_distributed(
            shard_set, view, params, name, world_size=params.gpus, backend="nccl",
            train_subset=train_subset, val_subset=val_subset, checkpoint=checkpoint,
        )  # fmt: skip
    torch.manual_seed(params.seed)  # the initial weights too: same seed, same data, same model
    model = create_model(params.arch, len(view.labels), params.pretrained_file, params.drop_rate)
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


@dataclass
class ModelPipelineConfig:
    """Parameters of the parent and child pipelines (configs/parent.yaml, configs/child.yaml)."""

    # Parent only: about this many training images per group per epoch (group-balanced sampling); 0 keeps all.
    per_group: int = 0
    # Name of the stack's MLflow experiment tracker; empty disables MLflow logging.
    experiment_tracker: str = "fieldguide-mlflow"
    # Where epoch checkpoints go; empty means <local artifact store>/checkpoints.
    checkpoint_dir: str = ""
    # Hyperparameter search.
    tuning: TuneConfig = field(default_factory=TuneConfig)
    # Base training parameters (tuned values override them).
    train: TrainParams = field(default_factory=TrainParams)
    # Quality gate a trained version must pass to be eligible for approval.
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass
class ReleaseConfig:
    """Parameters of the two-stage release evaluation (configs/release.yaml)."""

    # Routing depths reported: p(species) sums over the top-k groups (k=1 is plain routing).
    top_k: list[int] = field(default_factory=lambda: [1, 2, 3])
    # Also train a flat classifier on all species (same backbone) and report it beside the two-stage model.
    compare_flat: bool = False
