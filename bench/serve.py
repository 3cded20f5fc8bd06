"""Serving: the BentoML two-stage service over HTTP vs the raw in-process two-stage forward, in one run.

One release, the same images. Raw: fieldguide.serve.predictor.TwoStagePredictor.classify per image in this process
(decode, preprocess, router + children, answer), one after another. Served: `bentoml serve` of the same release
on loopback, with adaptive batching on and then off (servers run one at a time, so they never share the two
cores), loaded by an asyncio client at fixed request rates (open loop, latency counted from each request's
scheduled time, at most --max-in-flight outstanding) and then at saturation (--clients concurrent clients).

Usage: python bench/serve.py [--release ID] [--rates 10,25,50] [--seconds 10] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from fieldguide.ports import free_port  # noqa: E402
from fieldguide.serve.predictor import RELEASE_FILE, TwoStagePredictor  # noqa: E402
from fieldguide.serve.release import RELEASE_MODEL  # noqa: E402
from fieldguide.serve.servers import Server, start_bento, stop  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def raw(predictor: TwoStagePredictor, images: list[bytes], seconds: float) -> tuple[float, list[float]]:
    """Requests/s and per-request latencies of the in-process path."""
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        for jpeg in images:
            t0 = time.perf_counter()
            predictor.classify(jpeg)
            times.append((time.perf_counter() - t0) * 1000)
    return len(times) / (time.perf_counter() - start), times


async def classify(client: httpx.AsyncClient, url: str, jpeg: bytes) -> bool:
    """One POST /classify; True when it was answered 200."""
    return await send(client, url, {"files": {"file": ("x.jpg", jpeg, "image/jpeg")}}) == 200


async def send(client: httpx.AsyncClient, url: str, request: dict) -> int:
    """One POST /classify with httpx keyword arguments; its status (0 when the transport failed)."""
    try:
        return (await client.post(url + "/classify", **request)).status_code
    except httpx.HTTPError:
        return 0


async def fixed_rate(
    url: str,
    images: list[bytes],
    rate: float,
    seconds: float,
    bound: int,
    outcomes: list[tuple[float, int, float]] | None = None,
) -> dict[str, float]:
    """Open loop at `rate` requests/s for `seconds`; latency from each request's scheduled send time.

    With `outcomes`, every request is also recorded there as (scheduled time, status, latency ms).
    """
    limit = asyncio.Semaphore(bound)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=bound)) as client:

        async def one(i: int, scheduled: float) -> None:
            nonlocal errors
            async with limit:
                status = await send(client, url, {"files": {"file": ("x.jpg", images[i % len(images)], "image/jpeg")}})
            latency = (time.perf_counter() - scheduled) * 1000
            if outcomes is not None:
                outcomes.append((scheduled, status, latency))
            if status == 200:
                latencies.append(latency)
            else:
                errors += 1

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "throughput": len(latencies) / elapsed,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "errors": errors,
    }


async def saturate(url: str, images: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """`clients` concurrent closed-loop clients for `seconds`: the most the server answers per second."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                if await classify(client, url, images[i % len(images)]):
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return {
        "throughput": len(latencies) / elapsed,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "errors": errors,
    }


def variant(tag: str, batching: bool) -> str:
    """The release under `tag`, stored again with adaptive batching switched on or off; return its tag."""
    import bentoml

    source = bentoml.models.get(tag)
    name = f"{RELEASE_MODEL}:{source.tag.version}-bench-{'batch' if batching else 'nobatch'}"
    try:
        bentoml.models.get(name)
        return name
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(name, labels={"bench": "serve"}) as model:
        shutil.copytree(source.path, model.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.yaml"))
        release_file = Path(model.path) / RELEASE_FILE
        data = json.loads(release_file.read_text())
        data["serving"]["batching"] = batching
        release_file.write_text(json.dumps(data, indent=1))
    return name


def serve(tag: str, log_dir: Path) -> Server:
    """`bentoml serve bentos.service:Classifier` of one stored release on a free port."""
    os.environ["FIELDGUIDE_RELEASE"] = tag
    os.chdir(ROOT)
    return start_bento("bentos.service:Classifier", tag.split(":")[1], free_port(), log_dir, 180)


def main() -> None:
    """Raw, then served with batching on and off; print the table and the served ÷ raw ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", default="", help="Release id (default: the newest stored release).")
    parser.add_argument("--images", default=str(ROOT / ".fieldguide/demo-catalog/images"))
    parser.add_argument("--rates", default="10,25,50", help="Fixed request rates (requests/s).")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-in-flight", type=int, default=64)
    args = parser.parse_args()
    from run import _configure_environment

    _configure_environment()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would load the client's core
    import bentoml

    if args.release:
        release = bentoml.models.get(f"{RELEASE_MODEL}:{args.release}")
    else:
        stored = [m for m in bentoml.models.list(RELEASE_MODEL) if m.info.labels.get("bench") != "serve"]
        if not stored:
            raise SystemExit("no release stored yet: run `make run` (or approve versions) first")
        release = max(stored, key=lambda m: m.creation_time)
    files = sorted(Path(args.images).rglob("*.jpg"))[::7][:64]
    if not files:
        raise SystemExit(f"no JPEGs under {args.images}: pass --images DIR (e.g. the demo catalog's images)")
    images = [f.read_bytes() for f in files]
    predictor = TwoStagePredictor(Path(release.path))
    raw_rate, raw_times = raw(predictor, images, args.seconds)
    rows = [("raw in-process", "sequential", raw_rate, percentile(raw_times, 50), percentile(raw_times, 95), "", 0)]
    print(f"release {release.tag.version}: {len(images)} images; raw {raw_rate:.1f} req/s", flush=True)
    saturated = {}
    log_dir = Path(tempfile.mkdtemp(prefix="fieldguide-bench-serve-"))
    for batching in (True, False):
        server = serve(variant(str(release.tag), batching), log_dir)
        mode = f"served, batching {'on' if batching else 'off'}"
        try:
            for rate in [float(r) for r in args.rates.split(",")]:
                r = asyncio.run(fixed_rate(server.url, images, rate, args.seconds, args.max_in_flight))
                rows.append(
                    (mode, f"{rate:g} req/s", r["throughput"], r["p50"], r["p95"], f"{r['p99']:.1f}", r["errors"])
                )
                print(f"{mode} at {rate:g} req/s: {r}", flush=True)
            s = asyncio.run(saturate(server.url, images, args.clients, args.seconds))
            saturated[batching] = s["throughput"]
            rows.append((mode, f"{args.clients} clients", s["throughput"], s["p50"], s["p95"], "", s["errors"]))
        finally:
            stop(server)
    print(f"\n{'path':<26} {'load':<12} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'non-200':>8}")
    for path, load, rate, p50, p95, p99, errors in rows:
        print(f"{path:<26} {load:<12} {rate:7.1f} {p50:8.1f} {p95:8.1f} {p99:>8} {errors:>8}")
    print(
        f"\nsaturated served ÷ raw: batching on {saturated[True] / raw_rate:.2f}, off {saturated[False] / raw_rate:.2f}"
    )
    print(f"raw p50 latency {statistics.median(raw_times):.1f} ms per image (decode + preprocess + two-stage forward)")


if __name__ == "__main__":
    main()
