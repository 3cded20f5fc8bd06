"""Loader throughput on the same images, transforms and workers, side by side in one run.

  shards   fieldguide's WebDataset shard loader (the one training uses)
  loose    an ImageFolder-style loader over the same JPEGs as loose files
  memory   decode + transform of the same JPEG bytes held in memory (the I/O-free limit)

Usage: python bench/loader.py [--images-per-species 200] [--workers 2] [--epochs 2]
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
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from fieldguide.data.images import load_rgb  # noqa: E402
from fieldguide.data.loader import ShardDataset, iter_tar_samples, make_loader  # noqa: E402
from fieldguide.data.shards import ShardSet, flat_view  # noqa: E402


class BytesDataset(Dataset):
    """Map-style dataset over (jpeg bytes | path, label) pairs, decoded with the same function as the shards."""

    def __init__(self, items: list[tuple[bytes | str, int]], transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        src, label = self.items[i]
        data = Path(src).read_bytes() if isinstance(src, str) else src
        return self.transform(load_rgb(data)), label


def build(work: Path, images_per_species: int) -> ShardSet:
    """Demo catalog → QA → manifest → shards (reused when present)."""
    from fieldguide.config import QARules, ShardConfig, SplitConfig
    from fieldguide.data.demo import generate
    from fieldguide.data.manifest import Manifest
    from fieldguide.data.qa_report import qa_catalog
    from fieldguide.data.shards import build_shards

    if not (work / "catalog.csv").exists():
        generate(work, None, 5, images_per_species, 96, 0.0, 0)
    result, _ = qa_catalog(str(work / "catalog.csv"), None, QARules())
    return build_shards(Manifest.from_qa(result), SplitConfig(), ShardConfig(max_count=500), work / "shards")


def epoch_rate(loader, epochs: int) -> float:
    """Images per second over `epochs` full passes (first batch included: it is part of real epochs)."""
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        for x, _ in loader:
            n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Run the three loaders and print images/s and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-species", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fieldguide-bench-loader-"))
    shard_set = build(work, args.images_per_species)
    from fieldguide.train.models import create_model, data_config_for, train_transform

    transform = train_transform(data_config_for(create_model("mobilenetv3_small_050", 2), args.img_size))
    view = flat_view(shard_set)
    samples = [(s["jpg"], int(s["species.cls"])) for u in shard_set.urls("train") for s in iter_tar_samples(u)]
    loose_dir = work / "loose"
    loose = []
    for i, (jpg, label) in enumerate(samples):
        path = loose_dir / str(label) / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpg)
        loose.append((str(path), label))

    def loader(ds, shuffle):
        if isinstance(ds, ShardDataset):
            return make_loader(ds, args.batch_size, args.workers)
        return DataLoader(
            ds,
            args.batch_size,
            shuffle=shuffle,
            num_workers=args.workers,
            multiprocessing_context="forkserver" if args.workers else None,
        )

    rates = {
        "shards": epoch_rate(
            loader(ShardDataset(shard_set, "train", view, transform, shuffle=True), True), args.epochs
        ),
        "loose": epoch_rate(loader(BytesDataset(loose, transform), True), args.epochs),
        "memory": epoch_rate(loader(BytesDataset(samples, transform), True), args.epochs),
    }
    print(
        f"{len(samples)} train images, {args.workers} workers, batch {args.batch_size}, {args.img_size} px, "
        f"{args.epochs} epochs"
    )
    for name, rate in rates.items():
        print(f"{name:7s} {rate:8.0f} img/s   ratio to memory {rate / rates['memory']:.2f}")
    print(f"shards / loose files: {rates['shards'] / rates['loose']:.2f}x")


if __name__ == "__main__":
    main()
