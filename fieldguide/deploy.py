"""Serving environments on this machine: release → BentoML model → bento → staging/production servers.

Production is the gateway's fixed port (fieldguide.gateway) in front of a `bentoml serve` process; staging is a
`bentoml serve` process on its own port. Pids, ports and releases are kept in `<state dir>/state.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fieldguide.errors import FieldguideError
from fieldguide.gateway import write_upstream
from fieldguide.models import ModelBundle
from fieldguide.serving import Release, write_release

RELEASE_MODEL = "fieldguide-release"
BENTO_NAME = "fieldguide"


@dataclass
class DeployConfig:
    """Ports, budgets and sample sizes of the rollout (configs/deploy.yaml)."""

    # The production URL's port (the gateway); stays the same across releases.
    production_port: int = 3000
    # The staging server's port.
    staging_port: int = 3001
    # Seconds a new server may take to become ready.
    start_timeout_s: float = 180.0
    # Held-out test images sent to staging (serving correctness and served sanity are judged on them).
    accuracy_sample: int = 200
    # An in-process top-1 ahead of the runner-up by less than this may flip when served (a near tie).
    near_tie: float = 0.02
    # A release may evaluate at most this far below production's end-to-end accuracy on the same test split.
    release_max_drop: float = 0.02
    # Served answers on the held-out images must reach this macro-F1 (catches a release that is broken outright).
    min_served_macro_f1: float = 0.3
    # A child answering one species for at least this many routed images of two or more species is degenerate.
    degenerate_min_images: int = 10
    # Requests timed one after another for the latency check.
    latency_requests: int = 30
    # p95 latency budget of one /classify request on staging, milliseconds.
    p95_budget_ms: float = 1000.0
    # Serving settings written into each release (fieldguide.serving.ServingConfig fields).
    serving: dict[str, Any] = field(default_factory=dict)


@dataclass
class Server:
    """One running `bentoml serve` (or the gateway)."""

    pid: int
    port: int
    release: str = ""
    bento: str = ""
    log: str = ""

    @property
    def url(self) -> str:
        """Base URL on loopback."""
        return f"http://127.0.0.1:{self.port}"


@dataclass
class ServingState:
    """What runs where; persisted as JSON so every CLI call sees the same picture."""

    production: Server | None = None  # the backend the gateway forwards to
    staging: Server | None = None
    gateway: Server | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # promoted releases, oldest first: id, bento

    @classmethod
    def load(cls, folder: Path) -> ServingState:
        """Read state.json (empty state when absent)."""
        path = folder / "state.json"
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls(
            **{k: Server(**data[k]) if data.get(k) else None for k in ("production", "staging", "gateway")},
            history=data.get("history", []),
        )

    def save(self, folder: Path) -> None:
        """Write state.json atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, folder / "state.json")


def bentoml_bin() -> str:
    """The bentoml executable of this interpreter's environment."""
    return str(Path(sys.executable).parent / "bentoml")


def save_release_model(release: Release, bundles: dict[str, ModelBundle]) -> str:
    """Store the release in BentoML's model store as fieldguide-release:<release id>; return the tag."""
    import bentoml

    with bentoml.models.create(
        f"{RELEASE_MODEL}:{release.id}", labels={"release": release.id}, metadata={"versions": release.versions}
    ) as model:
        write_release(release, bundles, Path(model.path))
    return str(model.tag)


def release_folder(release_id: str) -> Path:
    """The folder of a release stored in BentoML's model store."""
    import bentoml

    try:
        return Path(bentoml.models.get(f"{RELEASE_MODEL}:{release_id}").path)
    except bentoml.exceptions.NotFound:
        raise FieldguideError(f"release {release_id} is not in BentoML's model store (was it deleted?)") from None


def build_bento(root: Path, release_id: str) -> str:
    """`bentoml build` of bentos/bentofile.yaml pinned to one release; return the bento tag."""
    env = {**os.environ, "FIELDGUIDE_RELEASE": f"{RELEASE_MODEL}:{release_id}"}
    cmd = [bentoml_bin(), "build", "-f", "bentos/bentofile.yaml", "--version", release_id, "--output", "tag", "."]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise FieldguideError(f"bentoml build failed: {(res.stderr or res.stdout).strip()[-2000:]}")
    tag = f"{BENTO_NAME}:{release_id}"
    if tag not in res.stdout:
        raise FieldguideError(f"bentoml build did not report {tag}: {res.stdout.strip()[-500:]}")
    return tag


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something listens on a loopback port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    """Whether a process exists."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def start_bento(bento: str, release_id: str, port: int, log_dir: Path, timeout_s: float) -> Server:
    """Start `bentoml serve BENTO` in its own session on `port` and wait until /readyz answers 200."""
    if port_in_use(port):
        raise FieldguideError(f"port {port} is already in use; stop what runs there (`python run.py stop`)")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{release_id}-{port}.log"
    env = {**os.environ, "FIELDGUIDE_RELEASE": f"{RELEASE_MODEL}:{release_id}"}
    cmd = [bentoml_bin(), "serve", bento, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(proc.pid, port, release_id, bento, str(log))
    try:
        wait_ready(server.url + "/readyz", timeout_s, proc)
    except FieldguideError:
        stop(server)
        raise
    return server


def start_gateway(port: int, upstream_file: Path, log_dir: Path) -> Server:
    """Start the production gateway on `port` (forwarding to whatever upstream_file names)."""
    if port_in_use(port):
        raise FieldguideError(f"port {port} is already in use; stop what runs there (`python run.py stop`)")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "fieldguide.gateway", "--port", str(port), "--upstream-file", str(upstream_file)]
    root = Path(__file__).resolve().parents[1]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    server = Server(proc.pid, port, log=str(log))
    wait_ready(server.url + "/_gateway", 30, proc)
    return server


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FieldguideError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise FieldguideError(f"{url} not ready after {timeout_s:.0f} s")


def stop(server: Server | None, grace_s: float = 20.0) -> None:
    """Stop a server's whole process group: SIGTERM, then SIGKILL after `grace_s`."""
    if server is None or not alive(server.pid):
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(server.pid):
        _reap(server.pid)
        time.sleep(0.2)
    if alive(server.pid):
        os.killpg(server.pid, signal.SIGKILL)
        _reap(server.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def health(server: Server | None, path: str = "/readyz") -> str:
    """'healthy', 'unhealthy (<status>)', 'down' or 'not running'."""
    if server is None:
        return "not running"
    if not alive(server.pid):
        return "down"
    try:
        code = httpx.get(server.url + path, timeout=3).status_code
    except httpx.HTTPError:
        return "down"
    return "healthy" if code == 200 else f"unhealthy ({code})"


def switch_production(
    state: ServingState, folder: Path, new: Server, config: DeployConfig, drain_s: float = 30
) -> None:
    """Blue/green: gateway (started if needed) → `new`, then the old backend stops once drained."""
    upstream_file = folder / "upstream.json"
    write_upstream(upstream_file, new.url, new.release)
    if state.gateway is None or not alive(state.gateway.pid):
        state.gateway = start_gateway(config.production_port, upstream_file, folder / "logs")
    state.gateway.release = new.release
    old = state.production
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:
        info = httpx.get(state.gateway.url + "/_gateway", timeout=5).json()
        if info["upstream"] == new.url and (old is None or not info["in_flight"].get(old.url)):
            break
        time.sleep(0.1)
    state.production = new
    state.history.append({"release": new.release, "bento": new.bento})
    state.save(folder)
    if old is not None and old.pid != new.pid:
        stop(old)
