"""Stable splits and WebDataset shards, plus parent/child views over them.

Views filter at read time instead of writing view shards: a view is a few numbers (which groups or species,
how to relabel, a keep-probability per group), so every model reads the single copy of the images, adding a
species never rewrites other groups' data, and skipping a sample costs a tar header read, not a JPEG decode.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from fieldguide.config import ShardConfig, SplitConfig
from fieldguide.data.catalog import read_bytes
from fieldguide.data.images import encode_jpeg, load_rgb, resize_shorter
from fieldguide.data.manifest import Manifest
from fieldguide.errors import FieldguideError

SPLITS = ("train", "val", "test")
# What a shard set records: 2 added per-group row digests and the JPEG quality (model fingerprints). The data
# pipeline passes it to its build_shards step, so shard sets cached from an older layout are rebuilt.
LAYOUT = 2
WHOLE = "whole"


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (content-addressed randomness)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(sha256: str, cfg: SplitConfig) -> str:
    """The split of an image: a pure function of its content hash and the salt.

    Each image falls independently, so every species is stratified in expectation and a grown catalog never
    moves an existing image to another split.
    """
    total = cfg.train + cfg.val + cfg.test
    u = unit_hash(cfg.salt, sha256) * total
    if u < cfg.train:
        return "train"
    return "val" if u < cfg.train + cfg.val else "test"


@dataclass
class ClassMaps:
    """species ↔ id, group ↔ id, species → group (ids are indices into the sorted name lists)."""

    species: list[str]
    groups: list[str]
    species_group: dict[str, str]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ClassMaps:
        """Sorted, stable class maps of a dataset version."""
        sg = manifest.species_to_group()
        return cls(species=sorted(sg), groups=sorted(set(sg.values())), species_group=dict(sorted(sg.items())))

    def group_species(self, group: str) -> list[str]:
        """The species of `group`, sorted: index = the child model's label id."""
        return [s for s in self.species if self.species_group[s] == group]


@dataclass
class ShardSet:
    """A preprocessed dataset version: shard files per split with counts and class maps."""

    location: str
    dataset_version: str
    shards: dict[str, list[str]]
    counts: dict[str, dict[str, int]]
    classes: ClassMaps
    store_size: int
    skipped: list[str] = field(default_factory=list)
    # split → group → sha256 over its sorted "image sha256<TAB>species" rows: a model's data fingerprint.
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    # JPEG quality of the stored images (0: a shard set of layout 1, which did not record it).
    jpeg_quality: int = 0

    def urls(self, split: str) -> list[str]:
        """Shard URLs of a split; `whole` is the union of train, val and test."""
        names = [n for s in SPLITS for n in self.shards[s]] if split == WHOLE else self.shards[split]
        base = self.location.rstrip("/")
        return [f"{base}/{n}" for n in names]

    def total(self, split: str) -> int:
        """Number of images in a split."""
        splits = SPLITS if split == WHOLE else (split,)
        return sum(sum(self.counts[s].values()) for s in splits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardSet:
        """Inverse of to_dict."""
        data = dict(data)
        data["classes"] = ClassMaps(**data["classes"])
        return cls(**data)


def _preprocess(task: tuple[str, str, int, int, dict | None]) -> tuple[str, bytes | None, str]:
    """Worker: read, verify, orient, resize and re-encode one image. Returns (sha256, jpeg|None, error)."""
    uri, sha, size, quality, storage_options = task
    try:
        data = read_bytes(uri, storage_options)
    except Exception as exc:  # noqa: BLE001 - a file vanished since QA: skip it, report it
        return sha, None, f"{uri}: unreadable since QA ({exc})"
    if hashlib.sha256(data).hexdigest() != sha:
        return sha, None, f"{uri}: content changed since QA"
    img = resize_shorter(load_rgb(data), size)
    return sha, encode_jpeg(img, quality), ""


def build_shards(
    manifest: Manifest,
    split_cfg: SplitConfig,
    shard_cfg: ShardConfig,
    out_dir: Path,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> ShardSet:
    """Split, preprocess and pack a dataset version into `{split}-{index:05d}.tar` shards under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = ClassMaps.from_manifest(manifest)
    species_id = {s: i for i, s in enumerate(classes.species)}
    group_id = {g: i for i, g in enumerate(classes.groups)}
    by_split: dict[str, list] = defaultdict(list)
    for img in manifest.images:
        by_split[split_of(img.sha256, split_cfg)].append(img)
    shards: dict[str, list[str]] = {}
    counts: dict[str, dict[str, int]] = {}
    skipped: list[str] = []
    digests: dict[str, dict[str, str]] = {}
    workers = shard_cfg.workers or os.cpu_count() or 1
    ctx = multiprocessing.get_context("forkserver")
    with (
        ctx.Pool(workers) as pool,
        tqdm(total=len(manifest.images), desc="shards", unit="img", disable=not progress, dynamic_ncols=True) as bar,
    ):
        for split in SPLITS:
            images = sorted(by_split.get(split, []), key=lambda i: i.sha256)
            meta = {i.sha256: i for i in images}
            tasks = [(i.uri, i.sha256, shard_cfg.store_size, shard_cfg.jpeg_quality, storage_options) for i in images]
            pattern = str(out_dir / f"{split}-%05d.tar")
            names: list[str] = []
            counter: Counter[str] = Counter()
            rows: dict[str, Any] = defaultdict(hashlib.sha256)
            with wds.ShardWriter(
                pattern,
                maxcount=shard_cfg.max_count,
                maxsize=shard_cfg.max_bytes,
                verbose=0,
                post=lambda fname, names=names: names.append(Path(fname).name),
            ) as sink:
                for sha, jpeg, error in pool.imap(_preprocess, tasks, chunksize=16):
                    bar.update()
                    if jpeg is None:
                        skipped.append(error)
                        continue
                    img = meta[sha]
                    sink.write(
                        {
                            "__key__": sha,
                            "jpg": jpeg,
                            "species.cls": species_id[img.label],
                            "group.cls": group_id[img.group],
                            "json": {"sha256": sha, "label": img.label, "group": img.group, "uri": img.uri},
                        }
                    )
                    counter[img.label] += 1
                    rows[img.group].update(f"{sha}\t{img.label}\n".encode())
            shards[split] = sorted(set(names) | {p.name for p in out_dir.glob(f"{split}-*.tar")})
            counts[split] = dict(sorted(counter.items()))
            digests[split] = {group: h.hexdigest() for group, h in sorted(rows.items())}
    shard_set = ShardSet(
        location=str(out_dir),
        dataset_version=manifest.dataset_version,
        shards=shards,
        counts=counts,
        classes=classes,
        store_size=shard_cfg.store_size,
        skipped=skipped,
        digests=digests,
        jpeg_quality=shard_cfg.jpeg_quality,
    )
    (out_dir / "classes.json").write_text(json.dumps(asdict(classes), indent=1))
    (out_dir / "shardset.json").write_text(json.dumps(shard_set.to_dict(), indent=1))
    return shard_set


@dataclass(frozen=True)
class View:
    """Which samples a model sees and with which label; applied at read time."""

    kind: str  # "parent", "child" or "flat"
    labels: tuple[str, ...]  # label id → class name (groups for the parent, species otherwise)
    group: str = ""  # the child's group
    keep: tuple[tuple[str, float], ...] = ()  # parent train sampling: group → keep-probability

    def label_of(self, species: str, group: str, classes: ClassMaps) -> int | None:
        """The label id of a sample in this view, or None when the view skips it."""
        if self.kind == "parent":
            return self.labels.index(group)
        if self.kind == "child":
            return self.labels.index(species) if group == self.group else None
        return self.labels.index(species)

    def keeps(self, key: str, group: str, split: str) -> bool:
        """Group-balanced sampling of the parent's training split (by content hash, so stable across epochs)."""
        if split != "train" or not self.keep:
            return True
        return unit_hash("parent-sample", key) < dict(self.keep).get(group, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "kind": self.kind,
            "labels": list(self.labels),
            "group": self.group,
            "keep": [list(k) for k in self.keep],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> View:
        """Inverse of to_dict."""
        return cls(data["kind"], tuple(data["labels"]), data.get("group", ""), tuple(tuple(k) for k in data["keep"]))


def parent_view(shard_set: ShardSet, per_group: int | None = None) -> View:
    """Router view: label = group id; the train split sampled to about `per_group` images per group."""
    keep: list[tuple[str, float]] = []
    if per_group:
        per_group_count: Counter[str] = Counter()
        for species, n in shard_set.counts["train"].items():
            per_group_count[shard_set.classes.species_group[species]] += n
        keep = [(g, min(1.0, per_group / n)) for g, n in sorted(per_group_count.items()) if n]
    return View("parent", tuple(shard_set.classes.groups), keep=tuple(keep))


def child_view(shard_set: ShardSet, group: str) -> View:
    """Child view of one group: only its species, labels 0..n-1 in the group's own class map."""
    if group not in shard_set.classes.groups:
        raise FieldguideError(f"unknown group {group!r}; known groups: {', '.join(shard_set.classes.groups)}")
    return View("child", tuple(shard_set.classes.group_species(group)), group=group)


def flat_view(shard_set: ShardSet) -> View:
    """All species in one classifier (the baseline the two-stage model is compared with)."""
    return View("flat", tuple(shard_set.classes.species))


def view_count(shard_set: ShardSet, view: View, split: str) -> int:
    """Samples a view holds in a split (exact for child/flat; expected value for the sampled parent train)."""
    total = 0.0
    for species, n in shard_set.counts[split].items():
        group = shard_set.classes.species_group[species]
        if view.label_of(species, group, shard_set.classes) is None:
            continue
        total += n * (dict(view.keep).get(group, 1.0) if split == "train" and view.keep else 1.0)
    return round(total)
