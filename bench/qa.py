"""QA throughput: fieldguide's QA (process pool) vs a plain single-process PIL loop over the same files.

Usage: python bench/qa.py [--rows 100000] [--size 32] [--workdir DIR]
Each side runs in its own subprocess so that peak RSS is measured per side. Prints images/s, the ratio and RSS.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_catalog(out: Path, rows: int, size: int) -> Path:
    """Rows unique small images (variants of a few rendered plants), 10 species in 2 groups."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from fieldguide.data.demo import make_species, render

    species = make_species(["succulents", "ferns"], 5)
    bases = [np.asarray(render(sp, np.random.default_rng([7, i]), size)) for i, sp in enumerate(species)]
    catalog = out / "catalog.csv"
    rng = np.random.default_rng(0)
    with catalog.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri", "label", "group"])
        for i in tqdm(range(rows), desc="bench catalog", unit="img"):
            k = i % len(species)
            arr = bases[k].copy()
            arr[rng.integers(size), rng.integers(size)] = rng.integers(0, 255, 3)  # unique bytes per file
            path = out / "img" / f"{i // 1000:03d}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=90)
            path.write_bytes(buf.getvalue())
            writer.writerow([path.relative_to(out).as_posix(), species[k].name, species[k].group])
    return catalog


def run_ours(catalog: str) -> dict:
    """Fieldguide QA with the default rules (one decoding process per core)."""
    from fieldguide.config import QARules
    from fieldguide.data.catalog import read_catalog
    from fieldguide.data.qa import run_qa

    t0 = time.perf_counter()
    result = run_qa(read_catalog(catalog), QARules(min_side=16), None, source=catalog, progress=False)
    return {"seconds": time.perf_counter() - t0, "valid": len(result.valid), "rejected": len(result.rejected)}


def run_baseline(catalog: str) -> dict:
    """Plain loop: read, sha256, PIL open + full decode + RGB, one process."""
    from PIL import Image

    base = Path(catalog).parent
    t0 = time.perf_counter()
    n = 0
    with open(catalog, newline="") as fh:
        for row in csv.DictReader(fh):
            data = (base / row["uri"]).read_bytes()
            hashlib.sha256(data).hexdigest()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img.convert("RGB")
            n += 1
    return {"seconds": time.perf_counter() - t0, "valid": n}


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round((own + kids) / 1024, 1)


def main() -> None:
    """Generate (or reuse) the catalog, run both sides, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--phase", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--catalog", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        res = run_ours(args.catalog) if args.phase == "ours" else run_baseline(args.catalog)
        res["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(res))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fieldguide-bench-qa-"))
    work.mkdir(parents=True, exist_ok=True)
    catalog = work / "catalog.csv"
    if not catalog.exists():
        make_catalog(work, args.rows, args.size)
    out = {}
    for phase in ("baseline", "ours"):
        proc = subprocess.run(
            [sys.executable, __file__, "--phase", phase, "--catalog", str(catalog)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = out["baseline"]["valid"]
    ours_ips = rows / out["ours"]["seconds"]
    base_ips = rows / out["baseline"]["seconds"]
    print(f"rows: {rows}  cores: {os.cpu_count()}  catalog: {catalog}")
    print(f"plain PIL loop (1 process):   {base_ips:8.0f} img/s  peak RSS {out['baseline']['peak_rss_mb']} MB")
    print(
        f"fieldguide QA (process pool): {ours_ips:8.0f} img/s  peak RSS {out['ours']['peak_rss_mb']} MB "
        f"(parent + largest worker)"
    )
    print(f"ratio ours/plain: {ours_ips / base_ips:.2f}x")


if __name__ == "__main__":
    main()
