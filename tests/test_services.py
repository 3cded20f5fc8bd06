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
def test_dashboard_lists_the_runs(child_run, browser):
    """Issue 17, acceptance 8: the dashboard opens on the runs, not on ZenML's first-run form."""
    port = _free_port()
    res = run_cli("dashboard", "--port", str(port), timeout=180)
    try:
        assert res.returncode == 0, res.stderr[-2000:]
        url = f"http://127.0.0.1:{port}/projects/default/runs"
        assert url in res.stdout
        runs = _wait(f"http://127.0.0.1:{port}/api/v1/runs?size=100").json()
        names = {item["name"] for item in runs["items"]}
        assert child_run.name in names
        pipelines = _wait(f"http://127.0.0.1:{port}/api/v1/pipelines").json()
        assert {"fieldguide_data", "fieldguide_child"} <= {p["name"] for p in pipelines["items"]}
        me = httpx.get(f"http://127.0.0.1:{port}/api/v1/current-user", timeout=30).json()
        assert me["body"]["email_opted_in"] is False  # the form's news sign-up box stays unticked
        assert me["metadata"]["user_metadata"]["finished_onboarding_survey"] is True
        page = browser.new_page()
        page.goto(url)
        page.get_by_text(child_run.name).first.wait_for(timeout=60000)
        assert "/survey" not in page.url and page.get_by_text("Add your account details").count() == 0
        page.close()
    finally:
        stop = run_cli("dashboard", "--stop", timeout=120)
        assert stop.returncode == 0, stop.stderr[-2000:]


@pytest.mark.slow
def test_mlflow_ui_serves_the_runs_store(child_run):
    from mlflow.tracking import MlflowClient

    from stacks import tracking_uri

    # The run's own steps tagged the experiment (before any UI started).
    tags = MlflowClient(tracking_uri()).get_experiment_by_name("fieldguide_child").tags
    assert tags.get("mlflow.experimentKind") == "custom_model_development", tags
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
        experiments = {e["name"]: {t["key"]: t["value"] for t in e.get("tags", [])} for e in res.json()["experiments"]}
        # Issue 17, acceptance 8: tagged as model training, so MLflow 3 opens it on its runs, not on GenAI traces.
        assert experiments["fieldguide_child"]["mlflow.experimentKind"] == "custom_model_development"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
