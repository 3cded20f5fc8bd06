"""Production processes under supervisord (the `supervisor` package): restarted when they die, stopped as a whole.

One supervisord per serving folder, driven over XML-RPC on a unix socket. Each program is this module's `run`
shim around the real command (`bentoml serve ...`, the gateway): it records every start (so `status` can show
restarts), clears the port of orphans a killed predecessor left behind (a `bentoml serve` killed with SIGKILL
leaves its worker processes running and listening), adopts orphans as a child subreaper, and on exit takes
the command's whole process tree with it. supervisord does the restarting.

`python -m fieldguide.serve.supervise run SPEC.json` is the shim; SPEC holds the command, its environment and port.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldguide.errors import FieldguideError

ROOT = Path(__file__).resolve().parents[2]
PR_SET_CHILD_SUBREAPER = 36
# Set on every server process: the serving folder it belongs to (and the marker that it is ours to stop).
SERVING_DIR_VAR = "FIELDGUIDE_SERVING_DIR"
# Seconds a stopping command gets before SIGKILL: the gateway has drained its requests before any stop, and
# BentoML's HTTP worker can otherwise wait a minute on its closed model-service connection.
STOP_GRACE_S = 5.0


@dataclass
class Program:
    """A supervised command."""

    name: str  # supervisord program name (letters, digits, dashes)
    cmd: list[str]  # the command, without a shell
    port: int  # the TCP port it listens on (cleared of orphans before each start)
    env: dict[str, str] = field(default_factory=dict)  # set on top of supervisord's environment (no secrets: on disk)
    log: str = ""  # stdout+stderr file


@dataclass
class ProgramStatus:
    """What supervisord and the start records say about a program."""

    state: str  # RUNNING, STARTING, BACKOFF, EXITED, FATAL, ... or ABSENT
    pid: int  # the shim's pid (0 when not running)
    restarts: int  # restarts of the command, and of its worker processes
    last_start: str  # UTC time of the latest (re)start


class Supervisor:
    """The supervisord of one serving folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.conf = self.folder / "supervisord.conf"
        self.programs = self.folder / "programs"
        self.pidfile = self.folder / "supervisord.pid"
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]
        self.socket = self.folder / "supervisor.sock"
        if len(str(self.socket)) > 100:  # unix socket paths are limited to 107 bytes
            self.socket = Path(tempfile.gettempdir()) / f"fieldguide-supervisor-{os.getuid()}-{digest}.sock"

    def rpc(self) -> Any:
        """The XML-RPC interface (`supervisor` namespace)."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        """Whether this folder's supervisord answers."""
        if not self.socket.exists():
            return False
        try:
            return self.rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure(self) -> None:
        """Start supervisord (daemonised) unless it runs."""
        if self.running():
            return
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        self.programs.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._config())
        res = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise FieldguideError(f"supervisord did not start: {(res.stderr or res.stdout).strip()[-1000:]}")
        deadline = time.monotonic() + 20
        while not self.running():
            if time.monotonic() > deadline:
                raise FieldguideError(f"supervisord did not answer on {self.socket}; see {self.folder / 'logs'}")
            time.sleep(0.1)

    def _config(self) -> str:
        logs = self.folder / "logs"
        return "\n".join(
            [
                "[unix_http_server]",
                f"file={_escape(str(self.socket))}",
                "chmod=0700",
                "[supervisord]",
                f"logfile={_escape(str(logs / 'supervisord.log'))}",
                f"pidfile={_escape(str(self.pidfile))}",
                f"childlogdir={_escape(str(logs))}",
                f"directory={_escape(str(ROOT))}",
                "loglevel=info",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                "[include]",
                f"files={_escape(str(self.programs))}/*.conf",
                "",
            ]
        )

    def add(self, program: Program, timeout_s: float = 30) -> None:
        """Register and start a program (replacing one of the same name)."""
        self.ensure()
        self.remove(program.name)
        spec = self.programs / f"{program.name}.json"
        spec.write_text(json.dumps(asdict(program)))
        spec.chmod(0o600)
        command = shlex.join([sys.executable, "-m", "fieldguide.serve.supervise", "run", str(spec)])
        (self.programs / f"{program.name}.conf").write_text(
            "\n".join(
                [
                    f"[program:{program.name}]",
                    f"command={_escape(command)}",
                    f"directory={_escape(str(ROOT))}",
                    "autostart=true",
                    "autorestart=true",
                    "startsecs=1",
                    "startretries=10",
                    "stopsignal=TERM",
                    "stopwaitsecs=30",
                    "redirect_stderr=true",
                    f"stdout_logfile={_escape(program.log or str(self.folder / 'logs' / f'{program.name}.log'))}",
                    "stdout_logfile_maxbytes=10MB",
                    "",
                ]
            )
        )
        rpc = self.rpc()
        try:
            rpc.reloadConfig()
            rpc.addProcessGroup(program.name)
        except (OSError, xmlrpc.client.Error) as exc:
            raise FieldguideError(f"supervisord did not take program {program.name}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while (state := self.status(program.name).state) != "RUNNING":
            if state in ("FATAL", "EXITED", "ABSENT") or time.monotonic() > deadline:
                raise FieldguideError(f"supervised program {program.name} did not start ({state}); see {program.log}")
            time.sleep(0.2)

    def remove(self, name: str) -> None:
        """Stop a program (its shim takes its process tree down) and forget it."""
        if self.running():
            rpc = self.rpc()
            with contextlib.suppress(xmlrpc.client.Fault):
                rpc.stopProcess(name, True)
            with contextlib.suppress(xmlrpc.client.Fault):
                rpc.removeProcessGroup(name)
        for suffix in (".conf", ".json", ".starts"):
            (self.programs / f"{name}{suffix}").unlink(missing_ok=True)

    def status(self, name: str) -> ProgramStatus:
        """A program's state, pid and start records."""
        restarts, last = read_starts(self.programs / f"{name}.starts")
        if not self.running():
            return ProgramStatus("ABSENT", 0, restarts, last)
        try:
            info = self.rpc().getProcessInfo(name)
        except xmlrpc.client.Fault:
            return ProgramStatus("ABSENT", 0, restarts, last)
        return ProgramStatus(info["statename"], int(info["pid"]), restarts, last)

    def shutdown(self, timeout_s: float = 60) -> None:
        """Stop every program, then supervisord itself."""
        if not self.running():
            return
        pid = int(self.pidfile.read_text()) if self.pidfile.is_file() else 0
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self.rpc().stopAllProcesses(True)
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self.rpc().shutdown()
        deadline = time.monotonic() + timeout_s
        while pid and alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.socket.unlink(missing_ok=True)


def _escape(value: str) -> str:
    """A value for supervisord's config, which expands %(name)s."""
    return value.replace("%", "%%")


def alive(pid: int) -> bool:
    """Whether a process exists."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def read_starts(path: Path) -> tuple[int, str]:
    """(restarts, time of the latest start) from a program's start record.

    Restarts are the starts after the first, plus the worker processes of the command that died while the command
    kept running (BentoML's arbiter respawns them).
    """
    if not path.is_file():
        return 0, ""
    data = json.loads(path.read_text())
    return max(0, int(data["starts"]) - 1) + int(data.get("worker_restarts", 0)), str(data["last_start"])


def record_start(path: Path, worker: bool = False) -> None:
    """Count one more start of a program (or, with `worker`, of one of its command's worker processes)."""
    data = json.loads(path.read_text()) if path.is_file() else {"starts": 0, "worker_restarts": 0}
    data["worker_restarts" if worker else "starts"] = data.get("worker_restarts" if worker else "starts", 0) + 1
    data["last_start"] = datetime.now(UTC).isoformat(timespec="seconds")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def terminate_tree(pid: int, signum: int = signal.SIGTERM) -> None:
    """Send `signum` to a process and every descendant (BentoML's workers sit in process groups of their own)."""
    import psutil

    try:
        tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        tree = [pid]
    for member in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signum)


def kill_pids(pids: list[int]) -> None:
    """SIGKILL these processes."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def run(spec_path: Path) -> int:
    """The shim: clear the port, start the command, forward SIGTERM, take every descendant down on exit."""
    import psutil

    from fieldguide.serve.servers import listeners

    program = Program(**json.loads(spec_path.read_text()))
    with contextlib.suppress(OSError, AttributeError):  # Linux: orphaned workers are re-parented to this shim
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    record = spec_path.with_suffix(".starts")
    record_start(record)
    serving_dir = Path(program.env.get(SERVING_DIR_VAR, ""))
    kill_pids(listeners(program.port, serving_dir))  # workers a SIGKILLed predecessor left listening
    stopping = False
    proc: subprocess.Popen | None = None

    def on_term(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if proc is not None:  # the workers too: `bentoml serve` alone waits ~60 s for them to finish
            terminate_tree(proc.pid, signum)

    signal.signal(signal.SIGTERM, on_term)  # before the command starts, so a stop never orphans it
    signal.signal(signal.SIGINT, on_term)
    proc = subprocess.Popen(program.cmd, env={**os.environ, **program.env}, cwd=ROOT)
    if stopping:
        proc.terminate()
    me = psutil.Process()
    known: dict[int, psutil.Process] = {}  # psutil refuses to signal a pid reused by another process
    workers: set[int] = set()
    deadline = None
    while proc.poll() is None:
        known = {p.pid: p for p in known.values() if p.is_running()}
        known.update({p.pid: p for p in me.children(recursive=True)})
        with contextlib.suppress(psutil.Error):
            now = {p.pid for p in psutil.Process(proc.pid).children()}
            if not stopping and proc.poll() is None:
                for _ in workers - now:  # a worker died while its parent lives on (it respawns it)
                    record_start(record, worker=True)
            workers = now
        if stopping and deadline is None:
            deadline = time.monotonic() + STOP_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            for process in known.values():
                with contextlib.suppress(psutil.Error):
                    process.kill()
            proc.kill()
        time.sleep(0.2)
    known.update({p.pid: p for p in me.children(recursive=True)})
    for process in known.values():
        with contextlib.suppress(psutil.Error):
            process.kill()
    kill_pids(listeners(program.port, serving_dir))
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    print(f"[supervise] {program.name}: command exited with {proc.returncode}", flush=True)
    return 0 if stopping else 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "run":
        sys.exit("usage: python -m fieldguide.serve.supervise run SPEC.json")
    sys.exit(run(Path(sys.argv[2])))
