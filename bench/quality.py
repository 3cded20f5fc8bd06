"""Two-stage quality vs the flat baseline, over seeds, on one demo catalog: is the router/child split worth it?

Every model is trained the way the pipelines train it (configs/{flat,parent,child}.yaml `train`, no tuning trials),
only the seed changes. Per seed: the flat classifier, the router, and one child per group started from that
seed's router (`--child-init router`, the default of configs/child.yaml) or from scratch. Reported: mean and
spread over seeds of router, oracle child (true group given) and end-to-end top-1 at k = 1, 2, 3, flat top-1,
and end-to-end − flat with a paired bootstrap 95% interval (test images resampled, the same draw for every seed).

Usage: python bench/quality.py [--images-per-species 150] [--seeds 0,1,2] [--child-init router|scratch]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.loader import build  # noqa: E402
from fieldguide.data.shards import ShardSet, child_view, flat_view, parent_view  # noqa: E402
from fieldguide.evaluate.two_stage import TwoStageHits, two_stage_hits  # noqa: E402
from fieldguide.keys import ModelKey  # noqa: E402
from fieldguide.runconfig import load_run_config  # noqa: E402
from fieldguide.train.job import train_on_view  # noqa: E402
from fieldguide.train.params import TrainParams  # noqa: E402

KS = (1, 2, 3)


def train_params(pipeline: str, seed: int, group: str = "") -> TrainParams:
    """The `train` parameters of configs/<pipeline>.yaml (group overrides in), with `seed`."""
    return dataclasses.replace(load_run_config(ROOT, pipeline, group=group).params.train, seed=seed)


def train_seed(shard_set: ShardSet, seed: int, child_init: str, log: Path, bar: tqdm) -> TwoStageHits:
    """Flat, router and children for one seed; their per-image hits on the test split."""
    per_group = load_run_config(ROOT, "parent").params.per_group
    with log.open("a") as out, contextlib.redirect_stdout(out):
        print(f"=== seed {seed}", flush=True)
        flat, _ = train_on_view(shard_set, flat_view(shard_set), train_params("flat", seed), "flat", progress=False)
        bar.update()
        router, _ = train_on_view(
            shard_set, parent_view(shard_set, per_group), train_params("parent", seed), "router", progress=False
        )
        bar.update()
        children = {}
        for group in shard_set.classes.groups:
            name = ModelKey.child(group).name
            children[group], _ = train_on_view(
                shard_set,
                child_view(shard_set, group),
                train_params("child", seed, group),
                name,
                progress=False,
                init=router if child_init == "router" else None,
            )
            bar.update()
    return two_stage_hits(router, children, shard_set, KS, flat)


def bootstrap(diffs: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean over seeds and images of paired differences (seeds × images), images resampled."""
    rng = np.random.default_rng(seed)
    n = diffs.shape[1]
    means = np.array([diffs[:, rng.integers(0, n, n)].mean() for _ in range(draws)])
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def report(runs: list[TwoStageHits], seeds: list[int]) -> tuple[list[tuple[str, str]], dict[str, object]]:
    """Markdown rows (measure, mean ± sd [per seed]) and the JSON summary."""

    def row(name: str, values: list[float]) -> tuple[str, str]:
        per_seed = ", ".join(f"{v:.3f}" for v in values)
        return name, f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f} ({per_seed})"

    rows = [
        row("router (group)", [float(r.router.mean()) for r in runs]),
        row("oracle child (true group given)", [float(r.oracle_child.mean()) for r in runs]),
    ]
    rows += [row(f"two-stage end to end, k = {k}", [float(r.end_to_end[k].mean()) for r in runs]) for k in KS]
    rows.append(row("flat", [float(r.flat.mean()) for r in runs]))
    summary: dict[str, object] = {"seeds": seeds, "rows": dict(rows)}
    for k in KS:
        diffs = np.stack([r.end_to_end[k].astype(float) - r.flat.astype(float) for r in runs])
        low, high = bootstrap(diffs)
        rows.append((f"end to end (k = {k}) − flat", f"{diffs.mean():+.3f} [95% CI {low:+.3f}, {high:+.3f}]"))
        summary[f"diff_k{k}"] = {"mean": float(diffs.mean()), "ci95": [low, high]}
    return rows, summary


def main() -> None:
    """Build the catalog, train every seed, print the table (markdown) and write quality.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-species", type=int, default=150)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--child-init", choices=("router", "scratch"), default="router")
    parser.add_argument("--workdir", default="")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fieldguide-bench-quality-"))
    started = time.perf_counter()
    shard_set = build(work, args.images_per_species)
    per_group: Counter[str] = Counter()
    for species, n in shard_set.counts["test"].items():
        per_group[shard_set.classes.species_group[species]] += n
    print(f"catalog {work}: {shard_set.total('train')} train, {shard_set.total('test')} test images", flush=True)
    print("test images per group: " + ", ".join(f"{g} {n}" for g, n in sorted(per_group.items())), flush=True)
    if min(per_group.values()) < 60:
        print("note: fewer than 60 test images in some group; raise --images-per-species", flush=True)
    log = work / "training.log"
    print(f"training log: {log}", flush=True)
    runs = []
    models = len(seeds) * (2 + len(shard_set.classes.groups))
    with tqdm(total=models, desc="models", unit="model", dynamic_ncols=True) as bar:
        for seed in seeds:
            runs.append(train_seed(shard_set, seed, args.child_init, log, bar))
    rows, summary = report(runs, seeds)
    minutes = (time.perf_counter() - started) / 60
    summary.update({"child_init": args.child_init, "minutes": minutes, "test_images": len(runs[0].router)})
    (work / "quality.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\n{len(runs[0].router)} test images, seeds {args.seeds}, children from {args.child_init}, {minutes:.1f} min\n"
    )
    print("| measure | mean ± sd over seeds (per seed) |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
