"""Training throughput: fieldguide's training loop vs a bare timm/torch loop, side by side in one run.

Same shards, model, batch size and threads; images/s of the training passes, validation excluded on both sides.

Usage: python bench/train.py [--images-per-species 120] [--epochs 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.loader import build  # noqa: E402
from fieldguide.data.loader import ShardDataset, make_loader  # noqa: E402
from fieldguide.data.shards import parent_view  # noqa: E402
from fieldguide.train.fit import TrainParams, fit  # noqa: E402
from fieldguide.train.models import create_model, data_config_for, train_transform  # noqa: E402


def bare(shard_set, view, params: TrainParams) -> float:
    """A plain loop: same data pipeline, model, AdamW and CE; no scheduler, clipping, checkpoints or logging."""
    torch.manual_seed(params.seed)
    model = create_model(params.arch, len(view.labels), drop_rate=params.drop_rate)
    transform = train_transform(data_config_for(model, params.img_size), params.aug_scale_min, params.color_jitter)
    ds = ShardDataset(shard_set, "train", view, transform, shuffle=True, seed=params.seed)
    loader = make_loader(ds, params.batch_size, params.workers)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    seen, busy = 0, 0.0
    for epoch in range(params.epochs):
        ds.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        busy += time.perf_counter() - t0
    return seen / busy


def ours(shard_set, view, params: TrainParams, work: Path) -> float:
    """Fieldguide's fit(): timm optimizer/scheduler, label smoothing, clipping, checkpoint per epoch, progress bar."""
    model = create_model(params.arch, len(view.labels), drop_rate=params.drop_rate)
    transform = train_transform(data_config_for(model, params.img_size), params.aug_scale_min, params.color_jitter)
    ds = ShardDataset(shard_set, "train", view, transform, shuffle=True, seed=params.seed)
    result = fit(
        model,
        make_loader(ds, params.batch_size, params.workers),
        None,
        params,
        checkpoint=work / "ckpt" / "last.pt",
        progress=True,
    )
    images = sum(h["images_per_s"] * h["epoch_s"] for h in result.history)
    return images / sum(h["epoch_s"] for h in result.history)


def main() -> None:
    """Build shards, run both loops, print images/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-species", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fieldguide-bench-train-"))
    shard_set = build(work, args.images_per_species)
    view = parent_view(shard_set)
    params = TrainParams(epochs=args.epochs, threads=args.threads, workers=args.workers, patience=0, warmup_epochs=0)
    torch.set_num_threads(args.threads)
    rate_bare = bare(shard_set, view, params)
    rate_ours = ours(shard_set, view, params, work)
    print(
        f"{shard_set.total('train')} train images, {params.arch} at {params.img_size} px, batch {params.batch_size}, "
        f"{args.threads} threads, {args.workers} loader workers, {args.epochs} epochs"
    )
    print(f"bare timm/torch loop: {rate_bare:7.0f} img/s")
    print(f"fieldguide fit():     {rate_ours:7.0f} img/s")
    print(f"ratio ours/bare: {rate_ours / rate_bare:.2f}")


if __name__ == "__main__":
    main()
