"""Streaming shard loader: webdataset tar reading, view filtering, seeded shuffling, timm transforms.

Each DataLoader worker takes a disjoint part of the stream (whole shards when there are enough, else every
n-th sample), so every sample is seen exactly once per epoch whatever the number of workers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fieldguide.data.images import load_rgb
from fieldguide.data.shards import ClassMaps, ShardSet, View, unit_hash


def iter_tar_samples(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one shard (local path or any fsspec URL), grouped by key with webdataset."""
    with fsspec.open(url, "rb", **(storage_options or {})) as stream:
        yield from wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"stream": stream, "url": url}]))


class ShardDataset(IterableDataset):
    """Iterable (image tensor, label) pairs of one split of a shard set, seen through a view."""

    def __init__(
        self,
        shard_set: ShardSet,
        split: str,
        view: View,
        transform: Callable[[Any], torch.Tensor],
        *,
        shuffle: bool = False,
        seed: int = 0,
        buffer_size: int = 512,
        subset: float = 1.0,
        with_keys: bool = False,
        storage_options: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.urls = shard_set.urls(split)
        self.classes: ClassMaps = shard_set.classes
        self.split = split
        self.view = view
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = buffer_size
        self.subset = subset
        self.with_keys = with_keys
        self.storage_options = storage_options
        self.rank = rank  # data-parallel training: this process reads every world_size-th part
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffling for `epoch` (call before iterating; workers are recreated each epoch)."""
        self.epoch = epoch

    def _labelled(self) -> Iterator[tuple[str, bytes, int]]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        # Every (rank, worker) pair reads a disjoint part: exactly once across processes and workers.
        wid, nworkers = self.rank * nworkers + wid, self.world_size * nworkers
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}/shards").shuffle(urls)
        by_shard = len(urls) >= nworkers
        if by_shard:
            urls = urls[wid::nworkers]
        index = 0
        for url in urls:
            for sample in iter_tar_samples(url, self.storage_options):
                key = sample["__key__"]
                if not by_shard:
                    index += 1
                    if (index - 1) % nworkers != wid:
                        continue
                if self.subset < 1.0 and unit_hash("subset", key) >= self.subset:
                    continue
                species = self.classes.species[int(sample["species.cls"])]
                group = self.classes.species_group[species]
                label = self.view.label_of(species, group, self.classes)
                if label is None or not self.view.keeps(key, group, self.split):
                    continue
                yield key, sample["jpg"], label

    def __iter__(self) -> Iterator[Any]:
        stream: Iterator[tuple[str, bytes, int]] = self._labelled()
        if self.shuffle:
            info = get_worker_info()
            rng = random.Random(f"{self.seed}/{self.epoch}/{info.id if info else 0}")
            stream = _buffer_shuffle(stream, self.buffer_size, rng)
        for key, jpg, label in stream:
            x = self.transform(load_rgb(jpg))
            yield (x, label, key) if self.with_keys else (x, label)


def _buffer_shuffle(stream: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    buf: list[Any] = []
    for item in stream:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(len(buf))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


def make_loader(dataset: ShardDataset, batch_size: int, workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader over a ShardDataset (batches preserve exactly-once semantics across workers)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context="forkserver" if workers else None,
    )
