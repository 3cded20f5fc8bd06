"""Serving: the BentoML two-stage service over HTTP vs the same release in process, in one run.

One release, the same demo JPEGs. In process (this process, nothing else running): decode + preprocess + the
two-stage forward in batches of the service's max_batch_size (the most the models do on this machine), and one
image at a time (the sequential figure). Served: `bentoml serve` of the release on loopback with the prediction
log on, behind the production gateway (fieldguide.serve.gateway) as in production; --clients closed-loop clients
saturate it through the gateway and then straight to the server, while the CPU time of every process (this load
generator included) is counted per answered request: the profile of where a request's time goes. Then an open
loop at --load x the gateway's saturated rate gives the tail latency (latency counted from each request's
scheduled time). Every serving process's memory (proportional set size) is printed, and whether the HTTP front's
process has torch loaded.

Usage: python bench/serve.py [--release ID] [--clients 64] [--seconds 10] [--load 0.7]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from fieldguide.ports import free_port  # noqa: E402
from fieldguide.serve.release import MAX_BATCH_SIZE, RELEASE_MODEL  # noqa: E402
from fieldguide.serve.servers import service_workers, torch_loaded  # noqa: E402

LOAD_GENERATOR = "load generator (this bench)"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def in_process(folder: Path, images: list[bytes], seconds: float) -> tuple[float, float, float]:
    """(batched img/s, sequential img/s, sequential p50 ms) of decode + preprocess + two-stage forward here."""
    from fieldguide.serve.predictor import TwoStagePredictor

    predictor = TwoStagePredictor(folder)
    batches = [images[i : i + MAX_BATCH_SIZE] for i in range(0, len(images), MAX_BATCH_SIZE)]
    predictor.forward(np.stack([predictor.decode(b) for b in batches[0]]))  # first calls: allocator, kernels
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in batches:
            predictor.forward(np.stack([predictor.decode(b) for b in batch]))
            done += len(batch)
    batched = done / (time.perf_counter() - start)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        for jpeg in images:
            t0 = time.perf_counter()
            predictor.classify(jpeg)
            times.append((time.perf_counter() - t0) * 1000)
    return batched, len(times) / (time.perf_counter() - start), percentile(times, 50)


def form(jpeg: bytes) -> aiohttp.FormData:
    """The multipart body of one POST /classify."""
    data = aiohttp.FormData()
    data.add_field("file", jpeg, filename="x.jpg", content_type="image/jpeg")
    return data


async def post(session: aiohttp.ClientSession, url: str, jpeg: bytes) -> int:
    """One POST /classify; its status (0 when the transport failed)."""
    try:
        async with session.post(url + "/classify", data=form(jpeg)) as response:
            await response.read()
            return response.status
    except (TimeoutError, aiohttp.ClientError):
        return 0


def session(connections: int) -> aiohttp.ClientSession:
    """The load generator's client (aiohttp: a lighter client than httpx, so it takes less of the shared CPU)."""
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def send(client: httpx.AsyncClient, url: str, request: dict) -> int:
    """One POST /classify with httpx keyword arguments (any body, malformed ones too); its status (0: transport)."""
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
    async with session(bound) as client:

        async def one(i: int, scheduled: float) -> None:
            nonlocal errors
            async with limit:
                status = await post(client, url, images[i % len(images)])
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
    async with session(clients) as client:

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                if await post(client, url, images[i % len(images)]) == 200:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - start
    return {
        "throughput": len(latencies) / elapsed,
        "answered": len(latencies),
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "errors": errors,
    }


@dataclass
class Processes:
    """The serving processes by role, and this load generator."""

    roles: dict[str, psutil.Process] = field(default_factory=dict)

    @classmethod
    def of(cls, gateway_pid: int, server_pid: int) -> Processes:
        """The gateway, `bentoml serve`'s arbiter and its workers (front: `Classifier`, model: `TwoStageModel`)."""
        roles = {LOAD_GENERATOR: psutil.Process(), "gateway": psutil.Process(gateway_pid)}
        roles["bentoml arbiter"] = psutil.Process(server_pid)
        workers = service_workers(server_pid)
        roles |= {f"HTTP front {i}": front for i, front in enumerate(workers.pop("fieldguide", []), 1)}
        models = workers.pop("fieldguide-model", [])
        roles |= {("model worker" if i == 1 else f"model worker {i}"): m for i, m in enumerate(models, 1)}
        roles |= {f"{name} {p.pid}": p for name, procs in workers.items() for p in procs}
        return cls(roles)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each role so far."""
        return {role: sum(p.cpu_times()[:2]) for role, p in self.roles.items()}

    def pss_mb(self) -> dict[str, float]:
        """Proportional set size of each serving process (MB), the load generator left out."""
        return {role: p.memory_full_info().pss / 2**20 for role, p in self.roles.items() if role != LOAD_GENERATOR}

    def fronts_with_torch(self) -> list[str]:
        """The HTTP front processes that have torch's library mapped (none may: the front imports no torch)."""
        return [role for role, p in self.roles.items() if role.startswith("HTTP front") and torch_loaded(p)]


def profiled(url: str, images: list[bytes], clients: int, seconds: float, procs: Processes) -> dict:
    """Saturate `url`, counting each process's CPU milliseconds per answered request meanwhile."""
    before, t0 = procs.cpu(), time.perf_counter()
    result = asyncio.run(saturate(url, images, clients, seconds))
    wall, after = time.perf_counter() - t0, procs.cpu()
    answered = max(result["answered"], 1)
    result["cpu_ms"] = {role: (after[role] - before[role]) * 1000 / answered for role in before}
    result["busy"] = sum(after[r] - before[r] for r in before) / wall  # cores kept busy (2.0: all of this machine)
    return result


def start_gateway(log_dir: Path, backend_url: str, release: str, max_body: int) -> tuple[subprocess.Popen, str]:
    """The production gateway (a plain child process here) on a free port, pointed at `backend_url`."""
    from fieldguide.serve.gateway import write_upstream
    from fieldguide.serve.servers import wait_ready

    upstream = log_dir / "upstream.json"
    write_upstream(upstream, backend_url, release, max_body)
    port = free_port()
    cmd = [sys.executable, "-m", "fieldguide.serve.gateway", "--port", str(port), "--upstream-file", str(upstream)]
    with (log_dir / "gateway.log").open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/_gateway", 30, proc)
    return proc, url


def main() -> None:
    """In process, then served (gateway and direct, with the profile), then the tail latency; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", default="", help="Release id (default: the newest stored release).")
    parser.add_argument("--images", default=str(ROOT / ".fieldguide/demo-catalog/images"))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64, help="Closed-loop clients at saturation.")
    parser.add_argument("--load", type=float, default=0.7, help="Share of the saturated rate for the latency run.")
    parser.add_argument("--max-in-flight", type=int, default=256)
    args = parser.parse_args()
    from run import _configure_environment

    _configure_environment()
    import bentoml

    from fieldguide.monitor.config import CaptureConfig
    from fieldguide.serve.edge import FRAMING
    from fieldguide.serve.front import ReleaseView
    from fieldguide.serve.servers import start_bento, stop

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
    folder, release_id = Path(release.path), release.tag.version
    batched, sequential, seq_p50 = in_process(folder, images, args.seconds)
    print(f"release {release_id}: {len(images)} images; in process {batched:.1f} img/s batched", flush=True)

    log_dir = Path(tempfile.mkdtemp(prefix="fieldguide-bench-serve-"))
    capture = (log_dir / "monitor", CaptureConfig())  # the prediction log on, as in production
    server = start_bento("bentos.service:Classifier", release_id, free_port(), log_dir / "logs", 180, capture=capture)
    gateway = None
    try:
        max_body = ReleaseView(folder).config.max_bytes + FRAMING
        gateway, gateway_url = start_gateway(log_dir, server.url, release_id, max_body)
        procs = Processes.of(gateway.pid, server.pid)
        asyncio.run(saturate(gateway_url, images, args.clients, 3))  # warm up: batcher, first forwards
        through = profiled(gateway_url, images, args.clients, args.seconds, procs)
        direct = profiled(server.url, images, args.clients, args.seconds, procs)
        rate = args.load * through["throughput"]
        tail = asyncio.run(fixed_rate(gateway_url, images, rate, args.seconds, args.max_in_flight))
        memory, torch_in_front = procs.pss_mb(), procs.fronts_with_torch()
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(10)
        stop(server)

    rows = [
        (f"in process, batches of {MAX_BATCH_SIZE}", {"throughput": batched}),
        (f"served via gateway, {args.clients} clients", through),
        (f"served direct, {args.clients} clients", direct),
        (f"via gateway, open loop at {rate:.0f} req/s", tail),
        ("in process, one image at a time", {"throughput": sequential, "p50": seq_p50}),
    ]
    print(f"\n{'path':<44} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'non-200':>8}")
    for name, r in rows:
        cells = [f"{r[k]:8.1f}" if k in r else f"{'':>8}" for k in ("p50", "p95", "p99")]
        print(f"{name:<44} {r['throughput']:7.1f} {' '.join(cells)} {r.get('errors', ''):>8}")
    print(f"\nCPU ms per answered request at saturation (2 cores = {2000 / through['throughput']:.1f} ms via gateway)")
    print(f"{'process':<30} {'via gateway':>12} {'direct':>8}")
    for role in through["cpu_ms"]:
        print(f"{role:<30} {through['cpu_ms'][role]:12.2f} {direct['cpu_ms'][role]:8.2f}")
    print(f"{'cores busy':<30} {through['busy']:12.2f} {direct['busy']:8.2f}")
    print("\nmemory (PSS, MB): " + ", ".join(f"{role} {mb:.0f}" for role, mb in memory.items()))
    print(f"HTTP front processes with torch loaded: {', '.join(torch_in_front) or 'none'}")
    print(
        f"\nsaturated served ÷ in-process batched: via gateway {through['throughput'] / batched:.2f}, "
        f"direct {direct['throughput'] / batched:.2f}"
    )
    print(f"sequential: served via gateway ÷ in process one at a time {through['throughput'] / sequential:.2f}")
    print(f"p99 ÷ p50 at {args.load:.0%} of saturation via gateway: {tail['p99'] / tail['p50']:.2f}")


if __name__ == "__main__":
    main()
