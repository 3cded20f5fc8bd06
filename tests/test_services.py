"""The local ZenML dashboard and the MLflow UI serve what the runs wrote."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 90) -> httpx.Response:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            res = httpx.get(url, timeout=5)
            if res.status_code < 500:
                return res
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@pytest.mark.slow
def test_dashboard_lists_the_runs(child_run):
    port = _free_port()
    res = run_cli("dashboard", "--port", str(port), timeout=180)
    try:
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"http://127.0.0.1:{port}" in res.stdout
        runs = _wait(f"http://127.0.0.1:{port}/api/v1/runs?size=100").json()
        names = {item["name"] for item in runs["items"]}
        assert child_run.name in names
        pipelines = _wait(f"http://127.0.0.1:{port}/api/v1/pipelines").json()
        assert {"fieldguide_data", "fieldguide_child"} <= {p["name"] for p in pipelines["items"]}
    finally:
        stop = run_cli("dashboard", "--stop", timeout=120)
        assert stop.returncode == 0, stop.stderr[-2000:]


@pytest.mark.slow
def test_mlflow_ui_serves_the_runs_store(child_run):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "mlflow-ui", "--port", str(port)],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/", timeout=120)
        res = httpx.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search", params={"max_results": 50})
        assert res.status_code == 200, res.text
        assert "fieldguide_child" in {e["name"] for e in res.json()["experiments"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
