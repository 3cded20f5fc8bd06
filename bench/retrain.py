"""Retraining from reviewed labels vs. training everything: wall time of each on the same catalog, in one run.

In a fresh state folder (its own ZenML store, stack and MLflow): a demo catalog, then

1. baseline: `run.py --pipeline all --no-cache` from scratch (data, router, every child, release evaluation);
2. the change: --labels fresh dusk photos of one group, with their true species, written the way `review commit`
   writes them (content-addressed copies in the catalog's feedback/ area, `source=review` rows, committed labels in
   the review store), so the catalog's only change is rows of that group;
3. ours: `run.py --pipeline retrain` (policy: no monitoring signal required, no cooldown; fieldguide's configs
   otherwise), which reruns the data pipeline and trains only that group's child.

Prints both wall times, the ratio retrain ÷ all, the goal 1.5 ÷ groups, and which models each run trained.

Usage: python bench/retrain.py [--groups 4] [--species-per-group 5] [--images-per-species 60] [--labels 40]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(env: dict[str, str], *args: str) -> tuple[float, str]:
    """Run `python run.py ARGS` in the bench's state folder; (seconds, stdout). Exits on failure."""
    start = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"run.py {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.monotonic() - start, res.stdout


def add_reviewed_rows(catalog: Path, group: str, species_per_group: int, n: int, size: int, home: Path) -> int:
    """Fresh dusk photos of `group` into the catalog as `review commit` adds them; returns the rows added."""
    import hashlib

    from fieldguide.data.demo import make_species
    from fieldguide.monitor.traffic import traffic_photos
    from fieldguide.review.commit import add_photos, append_rows
    from fieldguide.review.queue import Label, ReviewStore

    taxonomy = {group: [s.name for s in make_species([group], species_per_group)]}  # the catalog's trained species
    staged = home / "staged"
    staged.mkdir()
    labels, photos = [], {}
    stamp = datetime.now(UTC).isoformat()
    for i, photo in enumerate(traffic_photos(taxonomy, n, 4_242_000, size, "dusk", group)):
        sha = hashlib.sha256(photo.data).hexdigest()
        photos[sha] = staged / f"{sha}.jpg"
        photos[sha].write_bytes(photo.data)
        labels.append(
            Label(
                sha, f"bench-{i}", photo.species, group, "bench", "cli", stamp, answered_group=group, committed_at=stamp
            )
        )
    addition = add_photos(catalog, labels, photos.get)
    append_rows(catalog, addition.rows)
    store = ReviewStore(home / "review")
    with store.locked():
        store.append(labels)
    return len(addition.rows)


def trained(printed: str) -> list[str]:
    """The models a run trained (its "training, weights start from" lines)."""
    return re.findall(r"^(\S+): training, weights start from", printed, re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--species-per-group", type=int, default=5)
    parser.add_argument("--images-per-species", type=int, default=60)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--labels", type=int, default=40, help="reviewed photos added to one group")
    args = parser.parse_args()
    groups = ["succulents", "ferns", "flowers", "grasses", "mosses", "cacti"][: args.groups]
    home = Path(tempfile.mkdtemp(prefix="fieldguide-bench-retrain-"))
    (home / "no-repo").mkdir()
    env = {
        **os.environ,
        "FIELDGUIDE_HOME": str(home),
        "ZENML_CONFIG_PATH": str(home / "zenml"),
        "ZENML_REPOSITORY_PATH": str(home / "no-repo"),
        "BENTOML_HOME": str(home / "bentoml"),
    }
    os.environ.update(env)
    cli(env, "--stack", "local")
    demo = home / "demo"
    spec = ["--species-per-group", str(args.species_per_group), "--images-per-species", str(args.images_per_species)]
    cli(env, "data", "demo", "--out", str(demo), "--groups", ",".join(groups), "--size", str(args.size), *spec)
    catalog = demo / "catalog.csv"
    print(f"state {home}; catalog {catalog}: {len(groups)} groups × {args.species_per_group} species", flush=True)

    all_s, all_out = cli(env, "--pipeline", "all", "--no-cache", "--catalog", str(catalog))
    print(f"--pipeline all --no-cache: {all_s:.0f} s, trained {', '.join(trained(all_out))}", flush=True)

    added = add_reviewed_rows(catalog, groups[0], args.species_per_group, args.labels, args.size, home)
    config = home / "retrain-config"
    config.mkdir()
    (config / "retrain.yaml").write_text("parameters: {min_labels: 1, cooldown_h: 0, require_signal: false}\n")
    retrain_s, retrain_out = cli(env, "--pipeline", "retrain", "--catalog", str(catalog), "--config", str(config))
    decisions = re.findall(r"^(\S+): (retraining|skipped) — (.*)$", retrain_out, re.M)
    print(
        f"+{added} reviewed rows of {groups[0]}; --pipeline retrain: {retrain_s:.0f} s, trained "
        f"{', '.join(trained(retrain_out)) or 'nothing'}"
    )
    for model, what, why in decisions:
        print(f"  {model}: {what} — {why}")
    ratio, goal = retrain_s / all_s, 1.5 / len(groups)
    print(
        f"retrain ÷ all = {ratio:.2f} (goal ≤ 1.5 ÷ {len(groups)} groups = {goal:.2f}): "
        f"{'met' if ratio <= goal else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
