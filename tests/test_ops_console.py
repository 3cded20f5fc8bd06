"""The operations console (issue 17): a real `run.py console`, its HTTP API and a real headless Chromium.

Runs after test_monitor (file order): the verdicts it recorded and the photos it kept are what the monitoring and
review pages show; run alone, the module sends its own traffic and runs the monitor first.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, deploy_config, run_cli

pytestmark = pytest.mark.slow

RUN_CONFIGS = ROOT / "tests" / "configs" / "console"


@dataclass
class Console:
    """A console process on a free port, its config and its users' tokens."""

    config: Path
    port: int
    deploy: Path
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def production_url(self) -> str:
        """Where the rollouts this console queues put production."""
        return f"http://127.0.0.1:{yaml.safe_load(self.deploy.read_text())['parameters']['production_port']}"

    def start(self) -> None:
        cmd = [sys.executable, str(ROOT / "run.py"), "console", "--config", str(self.config)]
        log = (self.config.parent / "console.log").open("a")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/login", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.config.parent / "console.log").read_text()[-3000:]
            time.sleep(0.3)
        raise AssertionError("the console did not answer within 120 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=90)
        self.proc = None

    def api(self, who: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=60)

    def wait_run(self, run_id: int, timeout: float = 420) -> dict:
        deadline = time.time() + timeout
        with self.api("olga") as api:
            while time.time() < deadline:
                job = api.get(f"/runs/{run_id}").json()
                if job["status"] in ("succeeded", "failed"):
                    return job
                time.sleep(1)
        raise AssertionError(f"run {run_id} did not finish within {timeout}s: {job}")


@pytest.fixture(scope="module")
def console(releases, dataset, tmp_path_factory):
    """The console on free ports (its rollouts too), with a viewer, an approver and an operator; stopped after."""
    from fieldguide.keys import release_members
    from fieldguide.ports import free_port
    from fieldguide.serve.servers import stop_all
    from pipelines.deploy_runs import run_deploy
    from registry.promotion import serving_dir
    from registry.releases import ARCHIVED, production_release, set_release
    from registry.releases import now as stamp
    from registry.versions import production_version

    folder = tmp_path_factory.mktemp("console")
    deploy = deploy_config(folder / "deploy.yaml")
    port = free_port()
    config = folder / "console.yaml"
    params = {"port": port, "deploy_config": str(deploy), "run_configs": str(RUN_CONFIGS)}
    config.write_text(yaml.safe_dump({"parameters": params}))
    console = Console(config, port, deploy)
    if any(production_version(key) is None for key in release_members(dataset.groups)):
        # Run alone: the state test_monitor leaves (the good models promoted once, no release live now).
        run_deploy(ROOT, str(deploy), versions=releases.good, by="tester", dataset=dataset)
        stop_all(serving_dir())
        set_release(production_release().id, status=ARCHIVED, rolled_back_at=stamp())
    for name, role in (("victor", "viewer"), ("alice", "approver"), ("olga", "operator")):
        res = run_cli("users", "add", name, "--role", role)
        assert res.returncode == 0, res.stderr
        console.tokens[name] = res.stdout.strip().splitlines()[-1]
    console.start()
    yield console
    console.stop()
    stop_all(serving_dir())
    live = production_release()
    if live is not None:  # later modules start from no release in production
        set_release(live.id, status=ARCHIVED, rolled_back_at=stamp())


def signed_in(browser, console: Console, who: str):
    """A fresh browser context signed in as `who` through the sign-in form."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{console.url}/versions")
    assert "/login" in page.url
    page.fill("input[name=token]", console.tokens[who])
    page.click("button[type=submit]")
    page.wait_for_url("**/versions")
    cookie = next(c for c in context.cookies() if c["name"] == "fieldguide_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    return page


def state(console: Console) -> dict:
    """What a refused request must not change: versions, runs, audit log, releases."""
    with console.api("olga") as api:
        return {path: api.get(path).json() for path in ("/versions", "/runs", "/audit", "/releases", "/review")}


@pytest.fixture(scope="module")
def trained(console):
    """Acceptance 3 and 5: two child runs posted together; the console restarted while the first runs."""
    from zenml.client import Client

    with console.api() as anonymous:
        assert anonymous.post("/runs", json={"pipeline": "child", "group": "succulents"}).status_code == 401
    with console.api("olga") as api:
        bad = httpx.Client(base_url=api.base_url, headers={"Authorization": "Bearer fg_wrong"})
        assert bad.post("/runs", json={"pipeline": "child", "group": "succulents"}).status_code == 401
        assert api.get("/runs").json() == []  # nothing ran
        first = api.post("/runs", json={"pipeline": "child", "group": "succulents"})
        second = api.post("/runs", json={"pipeline": "child", "group": "ferns"})
        assert first.status_code == second.status_code == 202, (first.text, second.text)
        a, b = first.json()["id"], second.json()["id"]
        deadline = time.time() + 60
        while api.get(f"/runs/{a}").json()["status"] != "running":
            assert time.time() < deadline
            time.sleep(0.2)
        assert api.get(f"/runs/{b}").json()["status"] == "queued"
    console.stop()  # the running job is stopped with the console; both wait in the database
    console.start()
    first, second = console.wait_run(a), console.wait_run(b)
    assert first["status"] == second["status"] == "succeeded", (first["log_tail"], second["log_tail"])
    assert first["attempts"] == 2 and second["attempts"] == 1
    assert first["finished"] <= second["started"], (first, second)  # one after the other
    versions = {}
    for job, group in ((first, "succulents"), (second, "ferns")):
        runs = [r for r in job["runs"] if r["pipeline"] == "fieldguide_child"]
        assert len(runs) == 1 and runs[0]["status"] == "completed", job["runs"]
        run = Client().get_pipeline_run(runs[0]["id"])  # in the ZenML store
        assert run.model_version.model.name == f"child-{group}"
        versions[group] = f"v{run.model_version.number}"
        with console.api("victor") as api:  # its status, steps and log tail, as the runs page shows them
            shown = api.get(f"/pipeline-runs/{run.id}").json()
        assert shown["status"] == "completed" and {"name": "register_model", "status": "completed"} in shown["steps"]
        assert any(f"registered child-{group} {versions[group]}" in line for line in shown["log_tail"]), shown
    return versions


def test_bad_input_gets_a_json_4xx_and_changes_nothing(console, trained):
    """Acceptance 6."""
    before = state(console)
    with console.api("alice") as alice, console.api("olga") as olga:
        cases = [
            (alice.post("/models/child-cacti/versions/v1/approve", json={"note": "x"}), 404, "unknown model"),
            (alice.post("/models/child-ferns/versions/v999/approve", json={"note": "x"}), 404, "no version"),
            (alice.get("/models/router/versions/v999"), 404, "no version"),
            (olga.post("/runs", json={"pipeline": "bake"}), 400, "unknown pipeline"),
            (olga.post("/runs", json={"pipeline": "child", "group": "cacti"}), 400, "unknown group"),
            (olga.post("/runs", json={"pipeline": "data", "group": "ferns"}), 400, "only the child pipeline"),
            (
                olga.post("/runs", content=b'{"pipeline": "child",', headers={"content-type": "application/json"}),
                422,
                "JSON",
            ),
            (olga.post("/runs", json={"pipeline": ["child"]}), 422, "pipeline"),
            (olga.post("/runs", json={"pipeline": "child", "group": "ferns", "extra": 1}), 422, "extra"),
            (olga.post("/runs", content=b"x" * 70000, headers={"content-type": "application/json"}), 413, "over"),
            (alice.post("/models/child-ferns/versions/v1/approve", json={}), 422, "note"),
            (alice.post("/review/nope/label", json={"species": "x"}), 404, "not in the review queue"),
            (alice.post("/releases/rollback"), 403, "operator"),
            (olga.post("/releases/rollback"), 409, "no release in production"),
            (olga.get("/runs/99999"), 404, "no run"),
        ]
        chunks = (b"x" * 10000 for _ in range(10))  # no length declared: refused once 64 KiB arrived
        cases.append((olga.post("/runs", content=chunks, headers={"content-type": "application/json"}), 413, "over"))
        cases.append((alice.post("/runs", json={"pipeline": "child", "group": "ferns"}), 403, "operator"))
    for res, status, words in cases:
        assert res.status_code == status, (res.request.url, res.text)
        assert words.lower() in res.json()["error"].lower(), res.text
    assert state(console) == before


def test_viewer_sees_no_controls_and_a_direct_post_is_refused(console, trained, browser):
    """Acceptance 2 and 4 (a form without its CSRF token)."""
    version = trained["ferns"]
    page = signed_in(browser, console, "victor")
    page.goto(f"{console.url}/models/child-ferns/versions/{version}")
    assert page.locator("#approval-state").inner_text() == "pending"
    page.frame_locator("#report").locator("figcaption", has_text="confusion matrix").wait_for()
    assert page.locator("#decide").count() == 0 and page.locator("button", has_text="Approve").count() == 0
    approver = signed_in(browser, console, "alice")
    before = state(console)  # after both sign-ins (each is a line of the audit log)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    path = f"{console.url}/models/child-ferns/versions/{version}/approve"
    refused = page.request.post(path, form={"note": "sneaky", "csrf": csrf}, max_redirects=0)
    assert refused.status == 403, refused.text()
    no_csrf = approver.request.post(path, form={"note": "no token"}, max_redirects=0)
    assert no_csrf.status == 403 and "CSRF" in no_csrf.text()
    assert state(console) == before
    # A new token for the viewer signs their old session out at once.
    assert run_cli("users", "remove", "victor").returncode == 0
    res = run_cli("users", "add", "victor", "--role", "viewer")
    assert res.returncode == 0, res.stderr
    console.tokens["victor"] = res.stdout.strip().splitlines()[-1]
    page.goto(f"{console.url}/versions")
    assert "/login" in page.url
    page.context.close()
    approver.context.close()


def test_approver_approves_in_the_browser_and_the_release_reaches_production(console, trained, browser):
    """Acceptance 1."""
    version = trained["succulents"]
    page = signed_in(browser, console, "alice")
    page.click(f"a[href='/models/child-succulents/versions/{version}']")
    report = page.frame_locator("#report")
    report.locator("h1", has_text="evaluation on the test split").wait_for()
    report.locator("figcaption", has_text="confusion matrix").wait_for()
    assert report.locator("img").count() >= 2  # the confusion matrix and the reliability diagram
    page.fill("textarea[name=note]", "dusk photos fixed; checked the confusion matrix")
    page.click("button:has-text('Approve and roll out')")
    page.wait_for_url(f"**/models/child-succulents/versions/{version}")
    assert page.locator("#approval-state").inner_text() == "approved"
    assert "alice" in page.locator("#approval-record").inner_text()
    with console.api("alice") as api:
        rollout = next(j for j in api.get("/runs").json() if j["kind"] == "rollout")
    job = console.wait_run(rollout["id"])
    assert job["status"] == "succeeded", job["log_tail"]
    page.goto(f"{console.url}/releases")
    row = page.locator("#releases tr", has_text="production")
    assert row.count() == 1, page.locator("#releases").inner_text()
    assert "alice" in row.inner_text() and f"child-succulents {version}" in row.inner_text()
    live = httpx.get(f"{console.production_url}/release").json()
    assert live["versions"]["child-succulents"] == version
    page.context.close()
    with console.api("alice") as api:  # the API's reject, recorded as the token's user
        res = api.post(f"/models/child-ferns/versions/{trained['ferns']}/reject", json={"note": "keep production's"})
        assert res.status_code == 200, res.text
        assert res.json()["approval"]["state"] == "rejected" and res.json()["approval"]["by"] == "alice"


@pytest.fixture(scope="module")
def monitored(console):
    """Verdicts and kept photos for the monitoring and review pages (test_monitor's, or this module's own)."""
    from console import views
    from fieldguide.monitor.traffic import release_taxonomy, send, traffic_photos
    from fieldguide.serve.servers import release_folder
    from pipelines.monitor_runs import run_monitor
    from registry.releases import production_release

    live = production_release()
    assert live is not None
    url = console.production_url
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 1))
    photos = traffic_photos(release_taxonomy(release_folder(live.id)), 60, 77, 64, "dusk", "")
    sent = send(url, photos, 60, progress=False)
    assert sent.statuses == {200: 60}, sent.line()
    if not any(row.get("verdict") for row in views.monitoring()):
        run_monitor(ROOT, since, None, "")
    return [row for row in views.monitoring() if row.get("verdict")]


def test_monitoring_review_and_audit_pages(console, trained, monitored, browser):
    """Acceptance 7: verdicts with reasons; a label from the page shows in `review list`; the audit lists both."""
    import json

    assert any(row["reasons"] for row in monitored), monitored
    page = signed_in(browser, console, "alice")
    page.goto(f"{console.url}/monitoring")
    table = page.locator("#verdicts").inner_text()
    for row in monitored:
        assert row["model"] in table and row["verdict"] in table
        for reason in row["reasons"]:
            assert reason in table
    page.goto(f"{console.url}/review")
    entry = page.locator(".card[data-status=open]").first
    top = entry.locator("p", has_text="Top answers").inner_text()
    assert len(re.findall(r"\(\d\.\d\d\)", top)) >= 2, top  # the answer's top species with probabilities
    request_id = entry.get_attribute("id").removeprefix("entry-")
    options = entry.locator("select[name=choice] option")
    choice = options.nth(1).get_attribute("value")
    group, species = choice.split("/", 1)
    entry.locator("select[name=choice]").select_option(choice)
    entry.locator("button", has_text="Label").click()
    page.wait_for_url("**/review")
    listed = run_cli("review", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    labelled = next(r for r in rows if request_id in r["requests"])
    assert labelled["label"]["by"] == "alice" and labelled["label"]["species"] == species
    assert labelled["label"]["group"] == group and labelled["label"]["source"] == "console"
    page.goto(f"{console.url}/audit")
    audit = page.locator("#audit tr")
    approval = audit.filter(has_text="approve").filter(has_text="child-succulents")
    label = audit.filter(has_text="label").filter(has_text=request_id)
    assert approval.count() == 1 and "alice" in approval.inner_text()
    assert label.count() == 1 and "alice" in label.inner_text() and species in label.inner_text()
    assert time.strftime("%Y-%m-%d", time.gmtime()) in label.inner_text()
    page.context.close()
