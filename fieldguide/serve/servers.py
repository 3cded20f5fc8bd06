"""Serving environments on this machine: release → BentoML model → bento → staging/production servers.

Production is the gateway's fixed port (fieldguide.serve.gateway) in front of a `bentoml serve` process, both run by
supervisord (fieldguide.serve.supervise), which restarts them when they die; staging is a plain `bentoml serve`
process on its own port (a staging server that dies fails its release). Pids, ports and releases are kept in
`<state dir>/state.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from fieldguide.errors import FieldguideError
from fieldguide.monitor.capture import CAPTURE_VAR, MONITOR_DIR_VAR, SERVER_VAR, capture_config_json
from fieldguide.monitor.config import CaptureConfig
from fieldguide.ports import port_in_use
from fieldguide.serve.edge import FRAMING, WARM_UP
from fieldguide.serve.gateway import write_upstream
from fieldguide.serve.release import BENTO_NAME, RELEASE_MODEL, ServingConfig, read_release
from fieldguide.serve.supervise import (
    ROOT,
    SERVING_DIR_VAR,
    STOP_GRACE_S,
    Program,
    Supervisor,
    alive,
    kill_pids,
    terminate_tree,
)


@dataclass
class Server:
    """One running `bentoml serve` (or the gateway)."""

    pid: int
    port: int
    release: str = ""
    bento: str = ""
    log: str = ""
    program: str = ""  # its supervisord program, when supervised
    supervisor: str = ""  # the serving folder whose supervisord runs it

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

    @classmethod
    def load(cls, folder: Path) -> ServingState:
        """Read state.json (empty state when absent)."""
        path = folder / "state.json"
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls(**{k: Server(**data[k]) if data.get(k) else None for k in ("production", "staging", "gateway")})

    def save(self, folder: Path) -> None:
        """Write state.json atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, folder / "state.json")


def bentoml_bin() -> str:
    """The bentoml executable of this interpreter's environment."""
    return str(Path(sys.executable).parent / "bentoml")


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


def serving_config(release_id: str) -> ServingConfig:
    """The serving settings a release carries."""
    return read_release(release_folder(release_id)).serving


def start_bento(
    bento: str,
    release_id: str,
    port: int,
    log_dir: Path,
    timeout_s: float,
    supervised: bool = False,
    capture: tuple[Path, CaptureConfig] | None = None,
) -> Server:
    """Start `bentoml serve BENTO` on `port` and wait until /readyz answers 200.

    Supervised (production), supervisord runs it and restarts it when it dies; otherwise (staging) it is a plain
    child in its own session. The server reads its release's stage from the serving folder (`log_dir`'s parent)
    for its /release answer, and records its answers into `capture`'s monitoring folder with its settings.
    """
    if port_in_use(port):
        raise FieldguideError(f"port {port} is already in use; stop what runs there (`python run.py stop`)")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{release_id}-{port}.log"
    serving = serving_config(release_id)
    env = {
        **stores_env(),
        "FIELDGUIDE_RELEASE": f"{RELEASE_MODEL}:{release_id}",
        SERVING_DIR_VAR: str(log_dir.parent),
        "FIELDGUIDE_MAX_LATENCY_MS": str(serving.max_latency_ms),
        "FIELDGUIDE_FRONT_WORKERS": str(serving.front_workers),
        SERVER_VAR: f"{release_id}-{port}",
    }
    if capture is not None:
        env |= {MONITOR_DIR_VAR: str(capture[0]), CAPTURE_VAR: capture_config_json(capture[1])}
    cmd = [bentoml_bin(), "serve", bento, "--host", "127.0.0.1", "--port", str(port)]
    if supervised:
        program = Program(f"backend-{port}", cmd, port, env, str(log))
        server = _supervise(program, log_dir.parent, release_id, bento)
        try:
            supervisor = Supervisor(log_dir.parent)
            wait_ready(server.url + "/readyz", timeout_s, supervised_by=supervisor, program=server.program)
        except FieldguideError:
            stop(server)
            raise
        return server
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=ROOT, start_new_session=True
        )
    server = Server(proc.pid, port, release_id, bento, str(log))
    try:
        wait_ready(server.url + "/readyz", timeout_s, proc)
    except FieldguideError:
        stop(server)
        raise
    return server


def stores_env() -> dict[str, str]:
    """The variables naming this project's state and stores, passed explicitly to every supervised program.

    A program's environment is supervisord's (inherited from whoever started it) plus what its spec names; the
    spec file holds no other variable, so no secret from the caller's environment is written to disk.
    """
    names = ("FIELDGUIDE_HOME", "BENTOML_HOME", "ZENML_CONFIG_PATH", "ZENML_REPOSITORY_PATH", "PYTHONPATH")
    return {name: os.environ[name] for name in names if name in os.environ}


def _supervise(program: Program, folder: Path, release_id: str = "", bento: str = "") -> Server:
    supervisor = Supervisor(folder)
    supervisor.add(program)
    pid = supervisor.status(program.name).pid
    return Server(pid, program.port, release_id, bento, program.log, program.name, str(folder))


def start_gateway(port: int, upstream_file: Path, log_dir: Path) -> Server:
    """Start the production gateway on `port` under supervisord (forwarding to whatever upstream_file names)."""
    if port_in_use(port):
        raise FieldguideError(f"port {port} is already in use; stop what runs there (`python run.py stop`)")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "fieldguide.serve.gateway", "--port", str(port), "--upstream-file", str(upstream_file)]
    env = {**stores_env(), SERVING_DIR_VAR: str(log_dir.parent)}
    server = _supervise(Program("gateway", cmd, port, env, str(log)), log_dir.parent)
    wait_ready(server.url + "/_gateway", 30, supervised_by=Supervisor(log_dir.parent), program=server.program)
    return server


def wait_ready(
    url: str,
    timeout_s: float,
    proc: subprocess.Popen | None = None,
    supervised_by: Supervisor | None = None,
    program: str = "",
) -> None:
    """Poll `url` until it answers 200 (failing early when the process has exited or its program gave up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FieldguideError(f"server exited with code {proc.returncode} before {url} answered")
        if supervised_by is not None and (state := supervised_by.status(program).state) in ("FATAL", "ABSENT"):
            raise FieldguideError(f"supervised program {program} is {state} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise FieldguideError(f"{url} not ready after {timeout_s:.0f} s")


def stop(server: Server | None, grace_s: float = STOP_GRACE_S) -> None:
    """Stop a server: SIGTERM to its process group and workers, then SIGKILL after `grace_s`.

    Its worker processes (BentoML starts them in their own process groups) and anything still listening on its
    port after that (workers that outlived a parent that died) are killed too, so a stopped or crashed server
    never keeps holding its port.
    """
    if server is None:
        return
    if server.program:
        Supervisor(Path(server.supervisor)).remove(server.program)  # its shim takes the whole tree down
        kill_pids(listeners(server.port, Path(server.supervisor)))
        return
    tree = process_tree(server.pid)
    if alive(server.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        terminate_tree(server.pid)  # its workers too, or `bentoml serve` waits ~60 s for them
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and alive(server.pid):
            _reap(server.pid)
            time.sleep(0.2)
        if alive(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            _reap(server.pid)
    orphans = listeners(server.port, Path(server.log).parent.parent) if server.log else []
    for pid in [*tree, *orphans]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)


def service_workers(pid: int) -> dict[str, list[Any]]:
    """The BentoML worker processes (psutil) under `pid` (a `bentoml serve` or its supervisor), by service name.

    bentos/service.py's services: `fieldguide` (the HTTP fronts) and `fieldguide-model` (the model worker).
    """
    import psutil

    workers: dict[str, list[Any]] = {}
    for child in sorted(psutil.Process(pid).children(recursive=True), key=lambda c: c.pid):
        cmd = child.cmdline()
        if "--service-name" in cmd:
            workers.setdefault(cmd[cmd.index("--service-name") + 1], []).append(child)
    return workers


def torch_loaded(process: Any) -> bool:
    """Whether a process (psutil) has torch's library mapped (the HTTP front must not)."""
    return any("libtorch" in m.path for m in process.memory_maps(grouped=True))


def process_tree(pid: int) -> list[int]:
    """The live descendants of a process."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def listeners(port: int, serving_dir: Path) -> list[int]:
    """Servers of `serving_dir` (other than this process) listening on a TCP port.

    Only processes started for that serving folder count (their FIELDGUIDE_SERVING_DIR names it), so whatever
    else took the port is never touched.
    """
    import psutil

    pids = set()
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                pids.add(conn.pid)
    pids.discard(os.getpid())
    return sorted(pid for pid in pids if _serves(pid, serving_dir))


def _serves(pid: int, serving_dir: Path) -> bool:
    import psutil

    try:
        return psutil.Process(pid).environ().get(SERVING_DIR_VAR) == str(serving_dir)
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def health(server: Server | None, path: str = "/readyz") -> str:
    """'healthy', 'unhealthy (<status>)', 'down' or 'not running'."""
    if server is None:
        return "not running"
    if server.program:
        state = Supervisor(Path(server.supervisor)).status(server.program).state
        if state != "RUNNING":
            return f"down ({state.lower()})"
    elif not alive(server.pid):
        return "down"
    try:
        code = httpx.get(server.url + path, timeout=3).status_code
    except httpx.HTTPError:
        return "down"
    return "healthy" if code == 200 else f"unhealthy ({code})"


def warm_up(url: str, requests: int = 96, concurrency: int = 16, timeout_s: float = 60) -> None:
    """Send concurrent /classify requests to a fresh server before it takes traffic (marked: never recorded).

    A new BentoML server first fits its batcher's latency model and pays torch's first-call costs; served cold,
    the first seconds of production traffic after a switch get shed (503). Answers are not checked here (the
    staging checks did that); a synthetic photo costs the same forward as a real one.
    """
    import io
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(photo, "JPEG")
    files = {"file": ("warm-up.jpg", photo.getvalue(), "image/jpeg")}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(_: int) -> None:
            if time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"{url}/classify", files=files, headers={WARM_UP: "1"})

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))


def switch_production(
    state: ServingState, folder: Path, new: Server, production_port: int, drain_s: float = 90
) -> None:
    """Blue/green: gateway (started if needed) → `new`, then the old backend stops once drained.

    Drained means the gateway counts no request on the old backend (each counted from its first byte to the last
    byte of its answer); `drain_s` is longer than the longest request the gateway allows (60 s upstream timeout).
    """
    upstream_file = folder / "upstream.json"
    write_upstream(upstream_file, new.url, new.release, serving_config(new.release).max_bytes + FRAMING)
    if health(state.gateway, "/_gateway") != "healthy":
        stop(state.gateway)
        state.gateway = start_gateway(production_port, upstream_file, folder / "logs")
    state.gateway.release = new.release
    old = state.production
    state.production = new
    state.save(folder)
    deadline, drained = time.monotonic() + drain_s, False
    while not drained and time.monotonic() < deadline:
        try:
            info = httpx.get(state.gateway.url + "/_gateway", timeout=5).json()
        except httpx.HTTPError:  # the gateway restarting: it comes back pointing at `new`
            info = {}
        drained = info.get("upstream") == new.url and (old is None or not info["in_flight"].get(old.url))
        if not drained:
            time.sleep(0.1)
    if not drained:
        print(f"warning: requests to {old.url if old else '-'} still in flight after {drain_s:.0f} s", flush=True)
    if old is not None and old.pid != new.pid:
        stop(old)


def status_rows(folder: Path) -> list[dict[str, str]]:
    """Staging, production (gateway + backend) with release, port, pid, health and supervised restarts."""
    state = ServingState.load(folder)
    rows = []
    for role, server, path in (
        ("production (gateway)", state.gateway, "/_gateway"),
        ("production (backend)", state.production, "/readyz"),
        ("staging", state.staging, "/readyz"),
    ):
        row = {"role": role, "release": "", "url": "", "pid": "", "health": health(server, path), "restarts": ""}
        if server is not None:
            row.update(release=server.release, url=server.url, pid=str(server.pid))
        if server is not None and server.program:
            program = Supervisor(Path(server.supervisor)).status(server.program)
            row["pid"] = str(program.pid or "")
            row["restarts"] = f"{program.restarts} (last at {program.last_start})" if program.restarts else "0"
        rows.append(row)
    return rows


def stop_all(folder: Path) -> list[str]:
    """Stop every server recorded in `folder`; return what was stopped."""
    state = ServingState.load(folder)
    stopped = []
    for role in ("gateway", "production", "staging"):
        server = getattr(state, role)
        if server is not None:
            stop(server)
            stopped.append(f"{role} (pid {server.pid}, port {server.port})")
            setattr(state, role, None)
    state.save(folder)
    supervisor = Supervisor(folder)
    if supervisor.running():
        supervisor.shutdown()  # and any program a crashed rollout left registered
        stopped.append("supervisord")
    return stopped
