"""Runs started from the console: checked requests become run.py command lines, executed one at a time.

ZenML runs one pipeline per process, so every job is a `python run.py ...` subprocess; its log is kept under
FIELDGUIDE_HOME/console/runs/. Jobs live in the console database, so queued ones survive a restart, and a job a
stopped console left running is stopped and queued again at the next start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from console.config import ConsoleConfig
from console.store import Job, Store, console_dir
from fieldguide.errors import FieldguideError
from fieldguide.keys import PIPELINES

# Pipelines that read a catalog (`--catalog`).
CATALOG_PIPELINES = ("data", "all", "feedback", "retrain")


class RunRequestError(FieldguideError):
    """A run request naming an unknown pipeline or group, or an option the pipeline does not take."""


@dataclass
class RunRequest:
    """What the run form and `POST /api/v1/runs` ask for."""

    # One of fieldguide.keys.PIPELINES.
    pipeline: str
    # The child pipeline's plant group ("all": one run per group).
    group: str = ""
    # A catalog path or s3:// URI for the pipelines that read one ("": the last data run's).
    catalog: str = ""


def run_argv(req: RunRequest, cfg: ConsoleConfig, groups: list[str]) -> list[str]:
    """run.py's arguments for a checked request.

    Args:
        req: the request.
        cfg: the console's config (its run_configs and deploy_config folders).
        groups: the current dataset's groups (a child run must name one of them, or "all").

    Raises:
        RunRequestError: naming what is wrong and what is allowed.
    """
    if req.pipeline not in PIPELINES:
        raise RunRequestError(f"unknown pipeline {req.pipeline!r}; pipelines: {', '.join(PIPELINES)}")
    argv = ["--pipeline", req.pipeline]
    if req.pipeline == "child":
        if req.group not in (*groups, "all"):
            raise RunRequestError(f"unknown group {req.group!r}; groups: {', '.join(groups) or 'none yet'}, all")
        argv += ["--group", req.group]
    elif req.group:
        raise RunRequestError("only the child pipeline takes a group")
    if req.catalog:
        if req.pipeline not in CATALOG_PIPELINES:
            raise RunRequestError(f"a catalog is for the {', '.join(CATALOG_PIPELINES)} pipelines")
        argv += ["--catalog", req.catalog]
    config = run_config(req.pipeline, cfg)
    return [*argv, "--config", config] if config else argv


def run_config(pipeline: str, cfg: ConsoleConfig) -> str:
    """The config a run uses: the console's deploy config for deploy, else run_configs' file (a folder for all)."""
    if pipeline == "deploy":
        return cfg.deploy_config
    if not cfg.run_configs:
        return ""
    folder = Path(cfg.run_configs)
    if pipeline in ("all", "feedback", "retrain"):
        return str(folder)
    path = folder / f"{pipeline}.yaml"
    return str(path) if path.is_file() else ""


def rollout_argv(cfg: ConsoleConfig) -> list[str]:
    """Roll out the approvals nobody acted on yet (what `run.py watch` does once)."""
    return ["watch", "--once", *(["--config", cfg.deploy_config] if cfg.deploy_config else [])]


def rollback_argv(cfg: ConsoleConfig, live: str) -> list[str]:
    """Production back to the previous release, only while `live` is the one in production."""
    return ["rollback", "--from", live, *(["--config", cfg.deploy_config] if cfg.deploy_config else [])]


def log_path(job_id: int) -> Path:
    """Where a job's output goes."""
    return console_dir() / "runs" / f"{job_id}.log"


def log_tail(job_id: int, lines: int) -> list[str]:
    """The last lines of a job's log ([] before it started)."""
    path = log_path(job_id)
    if not path.is_file():
        return []
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 200 * lines))
        return fh.read().decode(errors="replace").splitlines()[-lines:]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def runs_between(started: str, finished: str) -> list[dict[str, str]]:
    """The ZenML pipeline runs created while a job ran: id, name, pipeline, status."""
    from zenml.client import Client

    start, end = datetime.fromisoformat(started), datetime.fromisoformat(finished)
    found = []
    for run in Client().list_pipeline_runs(sort_by="desc:created", size=100):
        if start <= _utc(run.created) <= end:
            pipeline = run.pipeline.name if run.pipeline else ""
            found.append({"id": str(run.id), "name": run.name, "pipeline": pipeline, "status": run.status.value})
    return found[::-1]


def _ours(pid: int, root: Path) -> bool:
    """Whether `pid` is still a run.py of this checkout (a stored pid may name another process after a reboot)."""
    import psutil

    try:
        return str(root / "run.py") in psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _stop_group(proc: subprocess.Popen[Any] | None, pid: int) -> None:
    """SIGTERM a job's process group, SIGKILL after 30 s."""
    import psutil

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        if proc is not None:
            proc.wait(timeout=30)
        else:
            psutil.Process(pid).wait(timeout=30)
        return
    except psutil.NoSuchProcess:
        return
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class Worker(threading.Thread):
    """Executes queued jobs one after the other until stopped."""

    def __init__(self, store: Store, root: Path, poll_s: float = 1.0) -> None:
        super().__init__(name="fieldguide-console-runs", daemon=True)
        self.store, self.root, self.poll_s = store, root, poll_s
        self.halt = threading.Event()

    def recover(self) -> list[int]:
        """Stop what a previous console left running and queue it again; the ids requeued."""
        jobs = self.store.requeue_running()
        for job in jobs:
            if job.pid and _ours(job.pid, self.root):
                _stop_group(None, job.pid)
        return [j.id for j in jobs]

    def run(self) -> None:
        """Claim and execute jobs until `stop`."""
        while not self.halt.is_set():
            try:
                job = self.store.claim_next()
                if job is None:
                    self.halt.wait(self.poll_s)
                    continue
                self.execute(job)
            except Exception as exc:  # noqa: BLE001 - the queue must outlive one bad job or a busy database
                print(f"console: run queue error ({type(exc).__name__}: {exc}); retrying", flush=True)
                self.halt.wait(5)

    def execute(self, job: Job) -> None:
        """Run one job's command line to its end (or until `stop`, which leaves it to be queued again)."""
        path = log_path(job.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as log:
            log.write(f"--- attempt {job.attempts} at {job.started}: run.py {' '.join(job.argv)}\n")
            log.flush()
            try:
                proc = subprocess.Popen(
                    [sys.executable, str(self.root / "run.py"), *job.argv],
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopping it stops its servers' launchers too
                )
            except OSError as exc:
                log.write(f"--- could not start: {exc}\n")
                self.store.finish(job.id, 127, [])
                return
            self.store.set_pid(job.id, proc.pid)
            while proc.poll() is None:
                if self.halt.wait(0.5):
                    _stop_group(proc, proc.pid)
                    log.write("--- stopped with the console; queued again\n")
                    return
        finished = datetime.now(UTC).isoformat()
        try:
            runs = runs_between(job.started or finished, finished)
        except Exception as exc:  # noqa: BLE001 - the job's outcome is recorded whatever the store says
            runs = [{"error": f"listing ZenML runs failed: {exc}"}]
        self.store.finish(job.id, proc.returncode, runs)

    def stop(self) -> None:
        """Stop after the running job is interrupted (it stays `running` and is queued again at the next start)."""
        self.halt.set()
        self.join(timeout=60)
