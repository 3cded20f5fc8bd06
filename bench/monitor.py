"""Monitoring: how often the verdicts are right, and what the prediction log costs, measured in one run.

Verdicts: for each seed, fresh demo traffic (fieldguide.monitor.traffic) in distribution and under each shift
(dusk on succulents, blur on flowers, new-species on ferns) goes through the release's own predictor in this
process; each answer's log entry is built as the server builds it (fieldguide.monitor.capture.log_entry) and each
window is judged as the monitor pipeline judges it (fieldguide.monitor.verdict.assess), at 100, 300 and 1,000
requests. False alarm: an in-distribution window where any model is not `ok`. Detection: a shifted window where the
shifted group's child is `retrain_recommended`.

Throughput: the same release under `bentoml serve`, the prediction log on, then off (one server at a time, twice
each, alternating), saturated by --clients concurrent clients; the ratio on ÷ off.

Usage: python bench/monitor.py [--seeds 5] [--sizes 100,300,1000] [--seconds 15] [--size 96]   (after `make run`)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHIFTS = {"dusk": "succulents", "blur": "flowers", "new-species": "ferns"}  # shift → the group it hits


def latest_release() -> Path:
    """The production release's folder (it must carry a monitoring reference)."""
    from fieldguide.monitor.reference import REFERENCE_DIR, TABLE
    from fieldguide.serve.servers import release_folder
    from registry.releases import production_release

    live = production_release()
    if live is None or not (release_folder(live.id) / REFERENCE_DIR / TABLE).is_file():
        raise SystemExit("no production release with a monitoring reference: run `make run` first")
    return release_folder(live.id)


def window_entries(predictor, stored: dict, photos: list, batch: int = 64) -> list[dict]:
    """Log entries of photos answered in process, exactly as the server logs them."""
    import numpy as np

    from fieldguide.monitor.capture import log_entry

    entries = []
    for start in range(0, len(photos), batch):
        chunk = photos[start : start + batch]
        images = [predictor.open(p.data) for p in chunk]
        rows = predictor.forward(np.stack([predictor.preprocess(img) for img in images]))
        for i, (photo, img, row) in enumerate(zip(chunk, images, rows, strict=True)):
            result = {**predictor.describe(row), "request_id": f"bench-{start + i}"}
            entries.append(log_entry(predictor, stored, result, row, img, photo.data))
    return entries


def verdicts(seeds: int, sizes: list[int], size: int) -> list[tuple[str, int, int, int, int]]:
    """(kind, requests, windows, hits, not-ok windows) per traffic kind and window size."""
    from fieldguide.keys import release_members
    from fieldguide.monitor.config import Thresholds
    from fieldguide.monitor.reference import load_reference
    from fieldguide.monitor.traffic import release_taxonomy, traffic_photos
    from fieldguide.monitor.verdict import OK, RETRAIN, assess
    from fieldguide.monitor.window import model_frame, reference_accuracy, window_frame
    from fieldguide.runconfig import load_run_config
    from fieldguide.serve.predictor import TwoStagePredictor

    folder = latest_release()
    predictor = TwoStagePredictor(folder)
    reference = load_reference(folder)
    width, stored = int(reference.meta["width"]), reference.meta
    thresholds: Thresholds = load_run_config(ROOT, "monitor").params.thresholds
    taxonomy = release_taxonomy(folder)
    models = [key.name for key in release_members(predictor.groups)]
    print(f"release {predictor.release.id}: reference of {len(reference.table)} test images, models {models}")
    rows = []
    for kind in ("in-distribution", *SHIFTS):
        group = SHIFTS.get(kind, "")
        if group and group not in taxonomy:
            group = next(iter(taxonomy))
        counts = {n: [0, 0, 0] for n in sizes}  # windows, hits, not-ok windows
        started = time.perf_counter()
        for seed in range(seeds):
            shift = "" if kind == "in-distribution" else kind
            photos = list(traffic_photos(taxonomy, max(sizes), 5000 + seed, size, shift, group))
            table = window_frame(window_entries(predictor, stored, photos), width)
            for n in sizes:
                window = table.iloc[:n]
                judged = {}
                for model in models:
                    assessment, _ = assess(
                        model,
                        model_frame(reference.table, model, width),
                        model_frame(window, model, width),
                        (float("nan"), 0),
                        reference_accuracy(reference, model),
                        width,
                        thresholds,
                    )
                    judged[model] = assessment.verdict
                not_ok = any(v not in (OK, "") for v in judged.values())
                hit = not_ok if not shift else judged.get(f"child-{group}") == RETRAIN
                counts[n][0] += 1
                counts[n][1] += int(hit)
                counts[n][2] += int(not_ok)
        for n in sizes:
            rows.append((kind + (f" ({group})" if group else ""), n, *counts[n]))
        print(f"{kind}: {seeds} seeds done in {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def throughput(seconds: float, clients: int, size: int) -> tuple[float, float]:
    """Saturated requests/s of the production release's bento with the prediction log on and off (mean of two)."""
    from bench.serve import saturate
    from fieldguide.monitor.config import CaptureConfig
    from fieldguide.monitor.traffic import release_taxonomy, traffic_photos
    from fieldguide.ports import free_port
    from fieldguide.serve.front import ReleaseView
    from fieldguide.serve.servers import start_bento, stop

    folder = latest_release()
    predictor = ReleaseView(folder)
    images = [p.data for p in traffic_photos(release_taxonomy(folder), 64, 4242, size)]
    scratch = Path(tempfile.mkdtemp(prefix="fieldguide-bench-monitor-"))
    rates: dict[bool, list[float]] = {True: [], False: []}
    import os

    os.environ["FIELDGUIDE_RELEASE"] = f"fieldguide-release:{predictor.release.id}"
    os.chdir(ROOT)
    for enabled in (True, False, True, False):
        capture = (scratch / ("on" if enabled else "off"), CaptureConfig(enabled=enabled))
        server = start_bento(
            "bentos.service:Classifier", predictor.release.id, free_port(), scratch / "logs", 180, capture=capture
        )
        try:
            asyncio.run(saturate(server.url, images, clients, 3))  # warm up: batcher and torch first calls
            result = asyncio.run(saturate(server.url, images, clients, seconds))
        finally:
            stop(server)
        rates[enabled].append(result["throughput"])
        print(f"prediction log {'on' if enabled else 'off'}: {result['throughput']:.1f} req/s", flush=True)
    logged = sum(1 for _ in (scratch / "on").glob("servers/*/predictions/data/*"))
    print(f"(log files written with the log on: {logged})")
    return sum(rates[True]) / 2, sum(rates[False]) / 2


def main() -> None:
    """Verdict rates per traffic kind and window size, then the throughput ratio; print both tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", default="100,300,1000", help="Window sizes (requests).")
    parser.add_argument("--size", type=int, default=96, help="Photo side: the demo catalog's (make run: 96).")
    parser.add_argument("--seconds", type=float, default=15, help="Saturation time per server.")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    from run import _configure_environment

    _configure_environment()
    import logging
    import warnings

    logging.getLogger("httpx").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = verdicts(args.seeds, sizes, args.size)
    print(f"\n{'traffic':<28} {'requests':>8} {'windows':>8} {'rate':>6}   meaning")
    for kind, n, windows, hits, not_ok in rows:
        meaning = "false alarm (any model not ok)" if kind == "in-distribution" else "detected (its child retrain)"
        print(f"{kind:<28} {n:>8} {windows:>8} {hits / windows:>6.2f}   {meaning}; not ok {not_ok}/{windows}")
    if not args.skip_throughput:
        on, off = throughput(args.seconds, args.clients, args.size)
        print(f"\nserved throughput, prediction log on ÷ off: {on:.1f} ÷ {off:.1f} req/s = {on / off:.2f}")


if __name__ == "__main__":
    main()
