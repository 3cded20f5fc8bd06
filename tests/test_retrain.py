"""Issue 13: retrain only what changed (fingerprints), children that start from the router, seeded training."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from fieldguide.data.shards import ClassMaps, ShardSet, child_view
from fieldguide.errors import FieldguideError
from fieldguide.fingerprint import ROUTER, SCRATCH, Fingerprint, Init, with_pin
from fieldguide.keys import ModelKey
from fieldguide.train.fit import TrainParams
from fieldguide.train.job import train_on_view
from fieldguide.train.models import ModelBundle, ModelMeta, create_model, init_backbone
from tests.conftest import ROOT, run_cli, state_env

TINY = ROOT / "tests" / "configs" / "tiny"
NEW_SPECIES = "Dryopteris filix-mas"  # the third fern of the demo generator
# What the monitor pipeline writes (record_verdicts): router v1 in production, its verdict retrain_recommended.
RECOMMEND_RETRAIN = """
from zenml import log_metadata
from zenml.client import Client
v = Client().get_model_version("router", 1)
Client().update_model_version(model_name_or_id=v.model.id, version_name_or_id=v.id, stage="production")
log_metadata(metadata={"monitoring": {"verdict": "retrain_recommended"}}, model_version_id=v.id)
"""


def _shard_set(digests: dict[str, dict[str, str]], groups: dict[str, list[str]]) -> ShardSet:
    species_group = {s: g for g, names in groups.items() for s in names}
    classes = ClassMaps(sorted(species_group), sorted(groups), dict(sorted(species_group.items())))
    return ShardSet("/nowhere", "ds-test", {}, {}, classes, 96, digests=digests)


def test_fingerprints_follow_each_models_own_data():
    """One new species in ferns: only child-ferns and flat change; the router changes only with the groups."""
    before = _shard_set(
        {s: {"ferns": f"f-{s}", "grasses": f"g-{s}"} for s in ("train", "val", "test")},
        {"ferns": ["a", "b"], "grasses": ["c", "d"]},
    )
    grown = _shard_set(
        {s: {"ferns": f"f2-{s}", "grasses": f"g-{s}"} for s in ("train", "val", "test")},
        {"ferns": ["a", "b", "e"], "grasses": ["c", "d"]},
    )
    regrouped = _shard_set(
        {s: {"ferns": f"f-{s}", "grasses": f"g-{s}", "moss": "m"} for s in ("train", "val", "test")},
        {"ferns": ["a", "b"], "grasses": ["c", "d"], "moss": ["x"]},
    )
    config, scratch = {"train": {"epochs": 3}}, Init(SCRATCH)

    def fp(key: ModelKey, shard_set: ShardSet, cfg=config, init=scratch) -> Fingerprint:
        return Fingerprint.of(key, shard_set, cfg, init)

    for key, changed in (
        (ModelKey.child("grasses"), False),
        (ModelKey.child("ferns"), True),
        (ModelKey.flat(), True),
        (ModelKey.router(), False),  # new rows alone do not retrain the router
    ):
        assert (fp(key, grown).digest != fp(key, before).digest) is changed, key
    assert fp(ModelKey.router(), regrouped).digest != fp(ModelKey.router(), before).digest
    assert fp(ModelKey.child("grasses"), before, {"train": {"epochs": 4}}).changes_since(
        fp(ModelKey.child("grasses"), before).to_dict()
    ) == ["config changed"]

    # A child pinned to router A: a new router B alone changes nothing once pinned back; new data does.
    a, b = Init(ROUTER, router="router-a"), Init(ROUTER, router="router-b")
    recorded = fp(ModelKey.child("ferns"), before, init=a).to_dict()
    on_b = fp(ModelKey.child("ferns"), before, init=b)
    assert on_b.changes_since(recorded) == ["start of the weights changed"]
    assert on_b.started_from(with_pin(b, recorded)).changes_since(recorded) == []
    assert on_b.started_from(with_pin(b, recorded)).digest == recorded["digest"]
    assert fp(ModelKey.child("ferns"), grown, init=b).started_from(with_pin(b, recorded)).changes_since(recorded) == [
        "data changed"
    ]
    old = _shard_set({}, {"ferns": ["a"]})  # built before row digests: always trains
    assert fp(ModelKey.child("ferns"), old).changes_since(recorded) and fp(ModelKey.child("ferns"), old).digest == ""


def test_init_backbone_keeps_a_fresh_head_and_refuses_another_arch():
    torch.manual_seed(1)
    arch = "mobilenetv3_small_050"
    router = ModelBundle(create_model(arch, 4), ModelMeta("router", arch, 4, list("abcd"), {}, "ds-test"))
    torch.manual_seed(2)
    child = create_model(arch, 3)
    head = {k: v.clone() for k, v in child.get_classifier().state_dict().items()}
    init_backbone(child, router, "child-ferns")
    for name, value in child.state_dict().items():
        if name.startswith("classifier."):
            assert torch.equal(value, head[name.removeprefix("classifier.")])
        else:
            assert torch.equal(value, router.model.state_dict()[name]), name
    with pytest.raises(FieldguideError, match="child-ferns cannot start from router: it is mobilenetv3_small_050"):
        init_backbone(create_model("mobilenetv3_small_100", 3), router, "child-ferns")


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    from bench.loader import build

    return build(tmp_path_factory.mktemp("seeded"), 12)


def test_same_seed_same_data_gives_bitwise_identical_weights(small_shards):
    """Acceptance 3: weights init, data order and augmentation all follow the seed (CPU), for a child from a router."""
    params = TrainParams(img_size=32, epochs=2, batch_size=16, workers=0, patience=0, seed=3)
    view = child_view(small_shards, "ferns")
    router, _ = train_on_view(
        small_shards,
        child_view(small_shards, "grasses"),
        TrainParams(img_size=32, epochs=1, workers=0),
        "r",
        progress=False,
    )
    first, _ = train_on_view(small_shards, view, params, "child-ferns", progress=False, init=router)
    torch.manual_seed(12345)  # whatever ran before: the seed decides
    second, _ = train_on_view(small_shards, view, params, "child-ferns", progress=False, init=router)
    other, _ = train_on_view(small_shards, view, TrainParams(**{**params.__dict__, "seed": 4}), "c", progress=False)
    a, b, c = (m.model.state_dict() for m in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _write_catalog(folder, rows: list[list[str]], taxonomy: dict[str, list[str]]) -> None:
    import yaml

    with (folder / "catalog.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["uri", "label", "group"], *rows])
    (folder / "taxonomy.yaml").write_text(yaml.safe_dump({"groups": taxonomy}, sort_keys=False))


@pytest.mark.slow
def test_one_new_species_retrains_only_its_child_and_flat(tmp_path):
    """Acceptance 1 and 4: `--pipeline all` on a grown catalog trains child-ferns and flat only; children record
    the router they started from, and `run.py models` shows it."""
    from fieldguide.data.demo import generate

    demo = generate(tmp_path / "demo", ["succulents", "ferns"], 3, 20, size=64, bad_fraction=0, seed=5, progress=False)
    with demo.catalog.open() as fh:
        header, *rows = list(csv.reader(fh))
    full_taxonomy = {"succulents": [], "ferns": []}
    for _, label, group in rows:
        if label not in full_taxonomy[group]:
            full_taxonomy[group].append(label)
    assert NEW_SPECIES in full_taxonomy["ferns"]
    before = {g: [s for s in names if s != NEW_SPECIES] for g, names in full_taxonomy.items()}
    _write_catalog(demo.catalog.parent, [r for r in rows if r[1] != NEW_SPECIES], before)
    env = state_env(tmp_path / "home")  # a new machine: its own ZenML store, MLflow and artifacts
    args = ["--pipeline", "all", "--catalog", str(demo.catalog), "--config", str(TINY)]

    res = run_cli("--stack", "local", *args, env=env, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for name in ("router", "child-succulents", "child-ferns", "flat"):
        assert re.search(rf"{name} v1: test_top1=", out), (name, out[-4000:])
    assert "child-ferns: training, weights start from router v1" in out, out[-4000:]
    assert "router: training, weights start from scratch" in out

    _write_catalog(demo.catalog.parent, rows, full_taxonomy)  # the grown catalog: one new fern species
    res = run_cli(*args, env=env, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for name in ("router", "child-succulents"):
        assert re.search(rf"^{name}: unchanged \(fingerprint [0-9a-f]{{12}} = v1's", out, re.M), (name, out[-4000:])
    for name in ("child-ferns", "flat"):
        assert re.search(rf"^{name}: retraining, since v1: data changed$", out, re.M), (name, out[-4000:])
    assert "child-ferns: training, weights start from router v1" in out
    trained = re.findall(r"; (\S+) v(\d+): test_top1=", out)
    assert sorted(trained) == [("child-ferns", "2"), ("flat", "2")], trained
    assert re.search(r"two-stage evaluation on \d+ test images", out), out[-3000:]

    res = run_cli("models", "--model", "child-ferns", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stdout.splitlines() if re.search(r"\bv[12]\b", line)]
    assert len(lines) == 2 and all("router v1" in line for line in lines), res.stdout

    # Monitoring recommends retraining the production router: it retrains; the children, pinned to v1, do not.
    subprocess.run([sys.executable, "-c", RECOMMEND_RETRAIN], env={**os.environ, **env}, check=True, timeout=120)
    res = run_cli(*args, env=env, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert re.search(r"^router: retraining, since v1: monitoring recommends retraining production v1$", out, re.M)
    for name, version in (("child-succulents", 1), ("child-ferns", 2), ("flat", 2)):
        assert re.search(rf"^{name}: unchanged \(fingerprint \w{{12}} = v{version}'s", out, re.M), (name, out[-4000:])
    assert re.findall(r"; (\S+) v(\d+): test_top1=", out) == [("router", "2")], out[-4000:]
    shutil.rmtree(tmp_path / "home", ignore_errors=True)
