"""Splits, shards, views and the loader; the data pipeline and its cache."""

import csv
import shutil
from collections import Counter

import numpy as np
import pytest
import torch

from fieldguide.config import QARules, ShardConfig, SplitConfig
from fieldguide.data.demo import make_species, render
from fieldguide.data.loader import ShardDataset, iter_tar_samples, make_loader
from fieldguide.data.manifest import Manifest
from fieldguide.data.qa_report import qa_catalog
from fieldguide.data.shards import SPLITS, build_shards, child_view, parent_view, split_of, view_count


def _to_tensor(img):
    return torch.from_numpy(np.asarray(img.resize((16, 16)), dtype=np.float32)).permute(2, 0, 1)


def _manifest(catalog) -> Manifest:
    result, _ = qa_catalog(str(catalog), None, QARules(), progress=False)
    return Manifest.from_qa(result)


@pytest.fixture(scope="module")
def manifest(demo_catalog):
    return _manifest(demo_catalog)


@pytest.fixture(scope="module")
def shard_set(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return build_shards(manifest, SplitConfig(), ShardConfig(store_size=48, max_count=40), out, progress=False)


def _keys_by_split(shard_set):
    return {s: [x["__key__"] for url in shard_set.urls(s) for x in iter_tar_samples(url)] for s in SPLITS}


def test_every_valid_image_exactly_once_across_splits(manifest, shard_set):
    keys = _keys_by_split(shard_set)
    everything = [k for s in SPLITS for k in keys[s]]
    assert len(everything) == len(set(everything)) == len(manifest.images)
    assert set(everything) == {i.sha256 for i in manifest.images}
    assert all(len(shard_set.shards[s]) >= 1 for s in SPLITS)
    assert all(name.startswith(f"{s}-") and name.endswith(".tar") for s in SPLITS for name in shard_set.shards[s])
    assert sum(shard_set.total(s) for s in SPLITS) == shard_set.total("whole") == len(manifest.images)


def test_grown_catalog_keeps_every_earlier_image_in_its_split(demo_catalog, manifest, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(demo_catalog.parent, grown)
    species = make_species(["succulents", "ferns", "flowers"], 3)
    new_rows = []
    for k in range(max(1, len(manifest.images) // 10)):
        sp = species[k % len(species)]
        path = grown / "images" / "new" / f"{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        render(sp, np.random.default_rng([99, k]), 64).save(path, "JPEG")
        new_rows.append([f"images/new/{k}.jpg", sp.name, sp.group])
    with (grown / "catalog.csv").open("a", newline="") as fh:
        csv.writer(fh).writerows(new_rows)
    bigger = _manifest(grown / "catalog.csv")
    assert len(bigger.images) == len(manifest.images) + len(new_rows)
    grown_shards = build_shards(bigger, SplitConfig(), ShardConfig(store_size=48), tmp_path / "s", progress=False)
    before = {
        k: s
        for s, ks in _keys_by_split(
            build_shards(manifest, SplitConfig(), ShardConfig(store_size=48), tmp_path / "s0", progress=False)
        ).items()
        for k in ks
    }
    after = {k: s for s, ks in _keys_by_split(grown_shards).items() for k in ks}
    assert all(after[k] == s for k, s in before.items())


def test_split_fractions_roughly_hold():
    shas = [f"{i:064x}" for i in range(5000)]
    counts = Counter(split_of(s, SplitConfig()) for s in shas)
    assert abs(counts["train"] / 5000 - 0.8) < 0.03 and abs(counts["test"] / 5000 - 0.1) < 0.02


def test_succulents_child_view(shard_set):
    view = child_view(shard_set, "succulents")
    succulents = shard_set.classes.group_species("succulents")
    assert list(view.labels) == succulents and len(succulents) == 3
    ds = ShardDataset(shard_set, "train", view, _to_tensor, shuffle=True, seed=3, with_keys=True)
    loader = make_loader(ds, batch_size=4, workers=2)
    labels, keys = [], []
    for _, y, k in loader:
        labels += y.tolist()
        keys += list(k)
    assert len(keys) == len(set(keys)) == view_count(shard_set, view, "train")  # exactly once, with 2 workers
    assert set(labels) == {0, 1, 2}
    meta = {x["__key__"]: x["json"] for url in shard_set.urls("train") for x in iter_tar_samples(url)}
    import json

    for key, label in zip(keys, labels, strict=True):
        record = json.loads(meta[key])
        assert record["group"] == "succulents"
        assert succulents[label] == record["label"]


def test_unknown_group_lists_known(shard_set):
    from fieldguide.errors import FieldguideError

    with pytest.raises(FieldguideError, match="known groups: ferns, flowers, succulents"):
        child_view(shard_set, "cacti")


def test_shuffle_is_deterministic_per_seed_and_epoch(shard_set):
    view = parent_view(shard_set)

    def order(seed, epoch):
        ds = ShardDataset(shard_set, "train", view, _to_tensor, shuffle=True, seed=seed, buffer_size=16, with_keys=True)
        ds.set_epoch(epoch)
        return [k for _, _, k in ds]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert sorted(order(1, 0)) == sorted(order(2, 0))


def test_parent_view_is_group_balanced(shard_set):
    view = parent_view(shard_set, per_group=10)
    ds = ShardDataset(shard_set, "train", view, _to_tensor)
    counts = Counter(y for _, y in ds)
    assert set(counts) == {0, 1, 2}
    assert all(4 <= n <= 18 for n in counts.values())
    full = ShardDataset(shard_set, "test", view, _to_tensor)
    assert sum(1 for _ in full) == shard_set.total("test")  # evaluation splits are never subsampled


@pytest.mark.slow
def test_data_pipeline_second_run_is_cached(local_stack, demo_catalog):
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from pipelines.runner import run_data
    from tests.conftest import ROOT

    first = run_data(ROOT, None, str(demo_catalog), no_cache=False)
    second = run_data(ROOT, None, str(demo_catalog), no_cache=False)
    client = Client()
    steps = client.get_pipeline_run(second.id).steps
    assert set(steps) == {"ingest_catalog", "validate_images", "version_dataset", "build_shards"}
    assert all(s.status == ExecutionStatus.CACHED for s in steps.values())
    run = client.get_pipeline_run(first.id)
    shard_set = run.steps["build_shards"].outputs["shard_set"][0]
    manifest = run.steps["version_dataset"].outputs["manifest"][0]
    assert shard_set.run_metadata["dataset_version"] == manifest.run_metadata["dataset_version"]
    assert "qa_report" in run.steps["validate_images"].outputs
    assert shard_set.load().total("whole") == manifest.load().counts["images"]
