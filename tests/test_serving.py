"""The BentoML service behind a real `bentoml serve`, the deploy pipeline, staging checks, promotion and rollback."""

from __future__ import annotations

import random
import threading
from uuid import UUID

import httpx
import pytest

from fieldguide.errors import FieldguideError
from fieldguide.serve.staging import png_header
from tests.conftest import ROOT, deploy_config, register_copy, run_cli


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, str]:
    """Deploy configs on free ports: release A's, and B's and C's (the same models answering 3 and 4 species)."""
    folder = tmp_path_factory.mktemp("deploy")
    a = deploy_config(folder / "a.yaml")
    b, c = deploy_config(folder / "b.yaml", like=a, top_k=3), deploy_config(folder / "c.yaml", like=a, top_k=4)
    return {"a": str(a), "b": str(b), "c": str(c)}


@pytest.fixture(scope="module")
def url(configs) -> str:
    """The production URL of this module's servers."""
    from fieldguide.config import load_yaml

    return f"http://127.0.0.1:{load_yaml(configs['a'])['parameters']['production_port']}"


@pytest.fixture(scope="module")
def images(demo_catalog) -> list[bytes]:
    """A few catalog JPEGs."""
    files = sorted((demo_catalog.parent / "images").rglob("*.jpg"))
    return [f.read_bytes() for f in files[::25][:8]]


@pytest.fixture(scope="module")
def weak_production(releases, dataset, configs, url):
    """The weak release in production first (deployed through the deploy pipeline); every server stopped after."""
    from fieldguide.serve.servers import stop_all
    from pipelines.deploy_runs import run_deploy
    from registry.promotion import serving_dir

    run_deploy(ROOT, configs["a"], versions=releases.weak, by="tester", dataset=dataset)
    yield release_id(url)
    stop_all(serving_dir())


@pytest.fixture(scope="module")
def production(weak_production, releases, dataset, configs, url):
    """Release A (the good models) replaces the weak release in production."""
    from pipelines.deploy_runs import run_deploy

    run_deploy(ROOT, configs["a"], versions=releases.good, by="tester", dataset=dataset)
    live = release_id(url)
    assert live != weak_production
    return live


def release_id(url: str) -> str:
    return httpx.get(f"{url}/release", timeout=10).json()["id"]


def classify(client: httpx.Client, url: str, jpeg: bytes) -> httpx.Response:
    return client.post(f"{url}/classify", files={"file": ("x.jpg", jpeg, "image/jpeg")})


class Hammer(threading.Thread):
    """A client sending requests to production until stopped, counting every failure."""

    def __init__(self, url: str, jpeg: bytes) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.jpeg = jpeg
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.releases: set[str] = set()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop_event.is_set():
                try:
                    resp = classify(client, self.url, self.jpeg)
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                    continue
                if resp.status_code == 200:
                    self.ok += 1
                    self.releases.add(resp.json()["release"])
                else:
                    self.failures.append(str(resp.status_code))

    def finish(self) -> Hammer:
        self.stop_event.set()
        self.join(timeout=60)
        return self


def failed_release(before: int) -> dict:
    """The one release recorded since `before` releases existed; it must be failed."""
    from registry.releases import release_record
    from registry.releases import release_versions as all_releases

    new = all_releases()[before:]
    assert len(new) == 1, [v.name for v in new]
    record = release_record(new[0].name)
    assert record["status"] == "failed", record
    return record


def deploy_must_fail(versions: dict[str, str], config: str, url: str, jpeg: bytes) -> dict:
    """Deploy `versions`, expect staging to fail while production answers every request; the failed record."""
    from fieldguide.serve.servers import status_rows
    from pipelines.deploy_runs import run_deploy
    from pipelines.runner import pipeline_errors
    from registry.promotion import serving_dir
    from registry.releases import release_versions as all_releases

    live, before = release_id(url), len(all_releases())
    hammer = Hammer(url, jpeg)
    hammer.start()
    with pytest.raises(FieldguideError, match="Pipeline run has failed"), pipeline_errors():
        run_deploy(ROOT, config, versions=versions, by="tester")
    hammer.finish()
    assert hammer.ok > 0 and not hammer.failures, hammer.failures[:5]
    assert hammer.releases == {live} and release_id(url) == live
    staging = next(r for r in status_rows(serving_dir()) if r["role"] == "staging")
    assert staging["health"] == "not running"
    return failed_release(before)


def test_degenerate_child_fails_staging_whatever_production(weak_production, releases, configs, url, images):
    """Issue 19, acceptance 3: a child answering one class fails on its own terms, though production is weaker."""
    from zenml.client import Client

    assert release_id(url) == weak_production

    assert releases.accuracy["degenerate"] > releases.accuracy["weak"]  # the regression check alone would pass it
    record = deploy_must_fail(releases.degenerate, configs["a"], url, images[1])
    assert "[FAIL] served sanity" in record["failure"] and "degenerate: child-succulents" in record["failure"]
    assert "[ok] regression" in record["failure"] and "[ok] serving correctness" in record["failure"]
    version = Client().get_model_version(model_version_name_or_number_or_id=releases.degenerate["child-succulents"])
    assert version.stage != "production"


def test_release_worse_than_production_fails_the_regression_check(production, releases, configs, url, images):
    """Issue 19, acceptance 2: served answers match its evaluation, but it evaluates far below production."""
    assert releases.accuracy["weak"] < releases.accuracy["good"] - 0.02
    record = deploy_must_fail(releases.weak, configs["a"], url, images[1])
    assert "[FAIL] regression" in record["failure"], record["failure"]
    for line in ("[ok] serving correctness", "[ok] served sanity", "[ok] health", "[ok] bad input"):
        assert line in record["failure"], record["failure"]


def test_production_answers_species_group_and_versions(production, url, images):
    """POST an image to the production URL → species, group, versions."""
    with httpx.Client(timeout=30) as client:
        body = classify(client, url, images[0]).json()
    assert len(body["species"]) == 5 and 0 < body["species"][0]["probability"] <= 1
    assert body["group"]["name"] in {"ferns", "flowers", "succulents"}
    assert set(body["versions"]) == {"router", "child-ferns", "child-flowers", "child-succulents"}
    assert body["release"] == production and body["latency_ms"] > 0
    info = httpx.get(f"{url}/release", timeout=10).json()
    assert info["status"] == "production" and info["evaluation"]
    status = run_cli("status")
    assert status.returncode == 0 and "production (gateway)" in status.stdout and production in status.stdout
    assert "healthy" in status.stdout
    releases = run_cli("releases")
    assert production in releases.stdout and "production" in releases.stdout


def malformed(rng: random.Random, jpeg: bytes, i: int) -> dict:
    """The i-th malformed request (httpx keyword arguments)."""
    kind = i % 5
    if kind == 0:
        return {"files": {"file": ("r.jpg", rng.randbytes(rng.randint(1, 4000)), "image/jpeg")}}
    if kind == 1:
        return {"files": {"file": ("t.jpg", jpeg[: rng.randint(1, len(jpeg) - 1)], "image/jpeg")}}
    if kind == 2:
        w, h = rng.randint(20_000, 200_000), rng.randint(20_000, 200_000)
        return {"files": {"file": ("big.png", png_header(w, h), "image/png")}}
    if kind == 3:
        return {"content": b"", "headers": {"content-type": rng.choice(["multipart/form-data", "image/jpeg", ""])}}
    return {"files": {rng.choice(["image", "upload", "f"]): ("x.jpg", jpeg, "image/jpeg")}}


def test_thousand_malformed_requests_get_4xx_and_server_stays_healthy(production, url, images):
    """A thousand malformed requests: only 4xx, and the server stays healthy."""
    rng = random.Random(0)
    codes: dict[int, int] = {}
    with httpx.Client(timeout=30) as client:
        for i in range(1000):
            code = client.post(f"{url}/classify", **malformed(rng, images[i % len(images)], i)).status_code
            codes[code] = codes.get(code, 0) + 1
        assert all(400 <= c < 500 for c in codes), codes
        assert client.get(f"{url}/readyz").status_code == 200
        assert classify(client, url, images[0]).status_code == 200
    assert sum(codes.values()) == 1000


def releases_listing() -> dict[str, str]:
    """`python run.py releases` as {release id: status}, read from its table."""
    res = run_cli("releases")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {}
    for line in res.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1].startswith("r20"):
            rows[cells[1]] = cells[2]
    return rows


def test_promotions_without_failed_requests_then_two_rollbacks_go_two_releases_back(
    production, releases, configs, url, images
):
    """Zero failed requests while B and C are promoted and rolled back; two rollbacks: C → B → A (issue 12, 2)."""
    from pipelines.deploy_runs import rollback, run_deploy

    def answers() -> list[list[tuple[str, float]]]:
        with httpx.Client(timeout=30) as client:
            return [
                [(s["name"], round(s["probability"], 3)) for s in classify(client, url, j).json()["species"]]
                for j in images
            ]

    before = answers()
    assert all(len(a) == 5 for a in before)
    hammer = Hammer(url, images[2])
    hammer.start()
    release_b = run_deploy(ROOT, configs["b"], versions=releases.good, by="tester")
    hammer.finish()
    assert hammer.ok > 0 and not hammer.failures, hammer.failures[:5]
    assert release_id(url) == release_b != production and production in hammer.releases
    after_b = answers()
    assert all(len(a) == 3 for a in after_b) and after_b != before
    release_c = run_deploy(ROOT, configs["c"], versions=releases.good, by="tester")
    assert all(len(a) == 4 for a in answers())

    hammer = Hammer(url, images[3])
    hammer.start()
    assert rollback(ROOT, configs["a"]) == release_b
    hammer.finish()
    assert hammer.ok > 0 and not hammer.failures, hammer.failures[:5]
    assert release_id(url) == release_b and answers() == after_b
    res = run_cli("rollback", "--config", configs["a"], timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"production is now {production}" in res.stdout
    assert release_id(url) == production and answers() == before
    assert httpx.get(f"{url}/release", timeout=10).json()["status"] == "production"
    listing = releases_listing()
    assert listing[release_c] == "archived" and listing[release_b] == "archived" and listing[production] == "production"


def test_staging_server_killed_during_its_tests_fails_the_release(
    production, release_versions, configs, url, images, monkeypatch
):
    """Issue 12, acceptance 3: the staging server dies mid-test → release failed with the reason, staging stopped.

    The deploy pipeline runs in this process (local orchestrator), so the kill is timed exactly: the whole server
    (the bentoml arbiter and its workers, each in its own session) is killed after the fifth held-out image.
    """
    import contextlib
    import os
    import signal

    import fieldguide.serve.staging as staging_checks
    from fieldguide.serve.servers import ServingState, process_tree
    from registry.promotion import serving_dir

    live = release_id(url)
    killed: list[int] = []
    answer = staging_checks.in_process_answer

    def answer_then_kill(predictor, jpeg):
        if len(killed) == 0 and predictor.release.id != live:
            answer_then_kill.calls = getattr(answer_then_kill, "calls", 0) + 1
            if answer_then_kill.calls == 5:
                staging = ServingState.load(serving_dir()).staging
                tree = [staging.pid, *process_tree(staging.pid)]
                for pid in tree:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed.extend(tree)
        return answer(predictor, jpeg)

    monkeypatch.setattr(staging_checks, "in_process_answer", answer_then_kill)
    record = deploy_must_fail(release_versions, configs["a"], url, images[4])
    assert len(killed) >= 2, killed  # the arbiter and at least one worker
    assert "[ok] health" in record["failure"], record["failure"]  # it died after the checks had started
    assert "[FAIL] staging server" in record["failure"] and "Error" in record["failure"], record["failure"]
    assert release_id(url) == live


def test_two_approvals_at_the_same_moment_both_reach_production(production, release_versions, configs, url):
    """Issue 12, acceptance 1: two `approve` processes for two children; the release after holds both."""
    import subprocess
    import sys

    from zenml import log_metadata
    from zenml.client import Client

    from registry.approvals import initial_approval
    from registry.releases import production_release

    numbers = {}
    for name in ("child-ferns", "child-flowers"):
        version_id = register_copy(release_versions[name], name, f"concurrent-{name}")
        gate = {"passed": True, "reasons": []}
        log_metadata(metadata={"gate": gate, "approval": initial_approval(gate)}, model_version_id=UUID(version_id))
        numbers[name] = Client().get_model_version(model_version_name_or_number_or_id=UUID(version_id)).number
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "approve", name, str(n), "--by", "tester", "--config", configs["a"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for name, n in numbers.items()
    ]
    outputs = [p.communicate(timeout=800)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outputs]
    assert any("waiting for another approval or rollout" in o for o in outputs), outputs
    live = production_release()
    assert live is not None and release_id(url) == live.id
    for name, number in numbers.items():
        assert live.versions[name] == f"v{number}", live.versions


def test_watch_rolls_out_an_approval_made_in_the_dashboard(production, release_versions, configs, url):
    """`watch` picks up a version tagged `approved` (as the dashboard does) and runs the deploy pipeline for it."""
    from zenml import log_metadata
    from zenml.client import Client

    from registry.approvals import initial_approval
    from registry.releases import release_record
    from registry.releases import release_versions as releases

    # A new, evaluated version of child-succulents (a copy of the production one, so staging passes).
    version_id = register_copy(release_versions["child-succulents"], "child-succulents", "retrained")
    gate = {"passed": True, "reasons": []}
    log_metadata(metadata={"gate": gate, "approval": initial_approval(gate)}, model_version_id=UUID(version_id))
    version = Client().get_model_version(model_version_name_or_number_or_id=UUID(version_id))
    Client().update_model_version(version.model.id, version.id, add_tags=["approved"])
    before = {v.name for v in releases()}
    res = run_cli("watch", "--once", "--config", configs["a"], timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"watch: child-succulents v{version.number} approved; rolling out" in res.stdout
    new = [v.name for v in releases() if v.name not in before]
    assert len(new) == 1
    record = release_record(new[0])
    assert record["versions"]["child-succulents"] == f"v{version.number}" and record["status"] == "production"
    after = Client().get_model_version(model_version_name_or_number_or_id=version.id)
    assert after.run_metadata["rollout"] and after.run_metadata["approval"]["by"] == "dashboard"
    assert after.stage == "production" and release_id(url) == new[0]
    res = run_cli("watch", "--once", "--config", configs["a"])
    assert "rolling out" not in res.stdout  # each approval rolls out once
