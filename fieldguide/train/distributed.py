"""Data-parallel training: one process per device with torch DistributedDataParallel (NCCL on GPUs, gloo on CPU).

Each rank reads its own part of the train split (fieldguide.data.loader's rank sharding), validates on the whole val
split, and takes the same decisions; rank 0 writes checkpoints and the exported model, which the caller loads.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fieldguide.data.shards import ShardSet, View
from fieldguide.ports import free_port
from fieldguide.train.fit import FitResult, Location, TrainParams
from fieldguide.train.models import ModelBundle, load_bundle, save_bundle


def _worker(rank: int, world_size: int, backend: str, port: int, job: dict[str, Any], out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from fieldguide.train.job import train_on_view

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        cuda = backend == "nccl"
        device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        params: TrainParams = job["params"]
        if not cuda:
            params.threads = max(1, (params.threads or torch.get_num_threads()) // world_size)

        def wrap(model: torch.nn.Module) -> torch.nn.Module:
            return DistributedDataParallel(model, device_ids=[rank] if cuda else None)

        bundle, result = train_on_view(
            job["shard_set"], job["view"], params, job["name"],
            train_subset=job["train_subset"], val_subset=job["val_subset"], checkpoint=job["checkpoint"],
            progress=rank == 0, rank=rank, world_size=world_size, wrap=wrap, device=device, init=job["init"],
        )  # fmt: skip
        if rank == 0:
            save_bundle(bundle, Path(out))
            (Path(out) / "fit.json").write_text(json.dumps(asdict(result)))
    finally:
        dist.destroy_process_group()


def train_distributed(
    shard_set: ShardSet,
    view: View,
    params: TrainParams,
    name: str,
    *,
    world_size: int,
    backend: str = "nccl",
    train_subset: float = 1.0,
    val_subset: float = 1.0,
    checkpoint: Location | None = None,
    init: ModelBundle | None = None,
) -> tuple[ModelBundle, FitResult]:
    """Train `world_size` DDP processes (spawned) and return rank 0's model and fit result.

    Per-process batch size is `params.batch_size`, so the global batch is world_size times larger.
    """
    params = TrainParams(**{**asdict(params), "gpus": 0})
    job = {
        "shard_set": shard_set,
        "view": view,
        "params": params,
        "name": name,
        "train_subset": train_subset,
        "val_subset": val_subset,
        "checkpoint": checkpoint,
        "init": init,
    }
    with tempfile.TemporaryDirectory(prefix="fieldguide-ddp-") as out:
        mp.start_processes(
            _worker, args=(world_size, backend, free_port(), job, out), nprocs=world_size, start_method="spawn"
        )
        bundle = load_bundle(Path(out))
        result = FitResult(**json.loads((Path(out) / "fit.json").read_text()))
    return bundle, result
