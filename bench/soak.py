"""Soak: the production URL under steady load and a stream of malformed requests, through a promotion and a crash.

Against the running production endpoint (after `make run`), on loopback: first the saturation rate (closed loop,
--clients clients), then --seconds of open-loop valid requests at --load x that rate (bench/serve.py's load
generator) plus malformed requests (the staging check's bad inputs) at --bad-rate. At 10% of the run a promotion
runs (`python run.py --pipeline deploy`: a new release of the production versions through staging, its checks
and the blue/green switch); at 85% the live `bentoml serve` parent is killed with SIGKILL and its supervisor
restarts it. Every loop is bounded in count and time.

Prints requests sent, answers by status class, failures outside the kill window (a valid request not answered
200, or a malformed one not answered 4xx), p50/p99 latency of the valid requests, and resident memory (each
process tree): the gateway at start and end, and the backend promoted at 10% from 30% of the run (warm) until
just before the kill.

Usage: python bench/soak.py [--seconds 300] [--load 0.7] [--bad-rate 2] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.serve import fixed_rate, percentile, saturate, send  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MiB."""
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.Error:
        return float("nan")


def memory(folder: Path) -> dict[str, float]:
    """Resident memory of the gateway's and the live backend's supervised process trees."""
    from fieldguide.serve.servers import ServingState
    from fieldguide.serve.supervise import Supervisor

    state = ServingState.load(folder)
    supervisor = Supervisor(folder)
    return {
        role: tree_rss_mb(supervisor.status(server.program).pid)
        for role, server in (("gateway", state.gateway), ("backend", state.production))
        if server is not None and server.program
    }


async def malformed(url: str, jpeg: bytes, rate: float, seconds: float, outcomes: list) -> None:
    """Bad requests (the staging check's list) at `rate` per second for `seconds`."""
    from fieldguide.serve.staging import bad_requests

    max_bytes = httpx.get(f"{url}/release", timeout=10).json()["serving"]["max_bytes"]
    kinds = bad_requests(jpeg, max_bytes)
    rng = random.Random(0)
    async with httpx.AsyncClient(timeout=60) as client:
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            name, request = rng.choice(kinds)
            outcomes.append((scheduled, await send(client, url, request), name))


def promote(events: dict[str, float]) -> None:
    """A promotion through the deploy pipeline, as a user starts it."""
    import subprocess

    events["promotion_start"] = time.perf_counter()
    res = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--pipeline", "deploy"], cwd=ROOT, capture_output=True, text=True
    )
    events["promotion_end"] = time.perf_counter()
    if res.returncode != 0:
        print(f"promotion failed:\n{(res.stdout + res.stderr)[-3000:]}", flush=True)
    events["promotion_ok"] = float(res.returncode == 0)


def kill_backend(folder: Path, url: str, jpeg: bytes, events: dict[str, float]) -> None:
    """SIGKILL the live `bentoml serve` parent; the window ends when production answers 200 again (max 60 s)."""
    import os

    import psutil

    from fieldguide.serve.servers import ServingState
    from fieldguide.serve.supervise import Supervisor

    state = ServingState.load(folder)
    shim = psutil.Process(Supervisor(folder).status(state.production.program).pid)
    parent = next(p for p in shim.children() if "serve" in p.cmdline())
    events["kill"] = time.perf_counter()
    os.kill(parent.pid, signal.SIGKILL)
    time.sleep(1)  # the shim notices within 0.2 s and takes the orphaned workers down
    with httpx.Client(timeout=10) as client:
        while time.perf_counter() - events["kill"] < 60:
            try:
                if client.post(f"{url}/classify", files={"file": ("x.jpg", jpeg, "image/jpeg")}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            print("production did not answer again within 60 s of the kill", flush=True)
            return
    events["recovered"] = time.perf_counter()


def main() -> None:
    """Measure saturation, soak at a fraction of it through a promotion and a crash, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300, help="Length of the soak.")
    parser.add_argument("--load", type=float, default=0.7, help="Fraction of the saturation rate sent.")
    parser.add_argument("--bad-rate", type=float, default=2.0, help="Malformed requests per second.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients when measuring saturation.")
    parser.add_argument("--images", default=str(ROOT / ".fieldguide/demo-catalog/images"))
    parser.add_argument("--config", default=None, help="Deploy config (default: configs/deploy.yaml).")
    args = parser.parse_args()
    from run import _configure_environment

    _configure_environment()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would load the client's core
    from pipelines.deploy_runs import deploy_config
    from registry.promotion import serving_dir

    cfg = deploy_config(ROOT, args.config)
    url, folder = f"http://127.0.0.1:{cfg.production_port}", serving_dir()
    files = sorted(Path(args.images).rglob("*.jpg"))[::7][:64]
    if not files:
        raise SystemExit(f"no JPEGs under {args.images}: pass --images DIR (e.g. the demo catalog's images)")
    images = [f.read_bytes() for f in files]
    if httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        raise SystemExit(f"production at {url} is not ready: run `make run` (or `make serve`) first")
    saturation = asyncio.run(saturate(url, images, args.clients, 10))["throughput"]
    rate = args.load * saturation
    print(f"saturation {saturation:.1f} req/s; soaking {args.seconds:g} s at {rate:.1f} req/s", flush=True)
    mem: dict[str, dict[str, float]] = {"start": memory(folder)}
    valid: list[tuple[float, int, float]] = []
    bad: list[tuple[float, int, str]] = []
    events: dict[str, float] = {}

    def timeline() -> None:
        start = time.perf_counter()

        def at(fraction: float) -> None:
            time.sleep(max(0.0, start + fraction * args.seconds - time.perf_counter()))

        at(0.1)
        promote(events)
        at(0.3)
        mem["warm"] = memory(folder)
        at(0.85)
        mem["before kill"] = memory(folder)
        kill_backend(folder, url, images[0], events)

    chaos = threading.Thread(target=timeline, daemon=True)

    async def load() -> None:
        await asyncio.gather(
            fixed_rate(url, images, rate, args.seconds, 256, valid),
            malformed(url, images[0], args.bad_rate, args.seconds, bad),
        )

    chaos.start()
    asyncio.run(load())
    chaos.join(timeout=120)
    time.sleep(2)
    mem["end"] = memory(folder)

    kill = events.get("kill", float("inf"))
    window = (kill, events.get("recovered", kill + 60) + 2)  # unrecovered: the failures after 60 s count
    promotion = (events.get("promotion_start", float("inf")), events.get("promotion_end", float("inf")))

    def phase(t: float) -> str:
        if window[0] <= t <= window[1]:
            return "kill window"
        return "during the promotion" if promotion[0] <= t <= promotion[1] else "steady"

    failures = [(phase(t), s) for t, s, _ in valid if s != 200]
    failures += [(phase(t), s) for t, s, _ in bad if not 400 <= s < 500]
    statuses = [s for _, s, _ in valid] + [s for _, s, _ in bad]
    classes = {f"{c}xx": sum(1 for s in statuses if s // 100 == c) for c in (2, 3, 4, 5)}
    classes["transport errors"] = sum(1 for s in statuses if s == 0)
    print(f"\nrequests sent: {len(statuses)} ({len(valid)} valid at {rate:.1f}/s, {len(bad)} malformed)")
    print("answers: " + ", ".join(f"{k} {v}" for k, v in classes.items()))
    if "promotion_end" in events:
        took = promotion[1] - promotion[0]
        print(f"promotion ({'passed' if events['promotion_ok'] else 'FAILED'}) took {took:.1f} s")
    if "recovered" in events:
        print(f"kill window: {window[1] - 2 - window[0]:.1f} s until production answered again")
    outside = [f for f in failures if f[0] != "kill window"]
    print(f"failures outside the kill window: {len(outside)}")
    for where in ("steady", "during the promotion", "kill window"):
        codes = Counter(s for w, s in failures if w == where)
        latencies = [ms for t, s, ms in valid if s == 200 and phase(t) == where]
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(
            f"  {where}: failures {sum(codes.values())} {dict(codes)}; valid answered in p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms, p99 ÷ p50 {p99 / p50:.2f} ({len(latencies)} answers)"
        )
    for role, first, last in (
        ("gateway", "start", "end"),
        ("gateway", "warm", "end"),
        ("backend", "warm", "before kill"),
    ):
        a, b = mem.get(first, {}).get(role, float("nan")), mem.get(last, {}).get(role, float("nan"))
        print(f"resident memory, {role}: {a:.0f} MiB ({first}) → {b:.0f} MiB ({last}), {(b - a) / a * 100:+.1f}%")


if __name__ == "__main__":
    main()
