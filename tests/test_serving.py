"""The BentoML service behind a real `bentoml serve`, the deploy pipeline, staging checks, promotion and rollback."""

from __future__ import annotations

import os
import random
import threading
from uuid import UUID

import httpx
import pytest

from fieldguide.errors import FieldguideError
from fieldguide.serve.staging import png_header
from tests.clients import Hammer, SlowUploader
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


def test_sagemaker_contract_ping_and_invocations_answer_like_classify(production, url, images):
    """The live `bentoml serve` answers SageMaker's /ping and /invocations (raw bytes, or base64 JSON) as /classify."""
    import base64

    from fieldguide.serve.servers import ServingState
    from fieldguide.serve.staging import raw_bad_requests
    from registry.promotion import serving_dir

    backend = ServingState.load(serving_dir()).production.url  # the bento itself, not the gateway
    same = ("species", "group", "release", "versions")
    with httpx.Client(timeout=30) as client:
        ping = client.get(f"{backend}/ping")
        assert ping.status_code == 200 and ping.json() == {"status": "healthy", "release": production}
        for jpeg in images[:3]:
            want = classify(client, backend, jpeg).json()
            raw = client.post(f"{backend}/invocations", content=jpeg, headers={"content-type": "image/jpeg"})
            wrapped = client.post(f"{backend}/invocations", json={"image": base64.b64encode(jpeg).decode()})
            gateway = client.post(f"{url}/invocations", content=jpeg, headers={"content-type": "image/jpeg"})
            for resp in (raw, wrapped, gateway):
                assert resp.status_code == 200 and resp.headers["x-request-id"], resp.text
                assert {k: resp.json()[k] for k in same} == {k: want[k] for k in same}
        # The same malformed images get the same status (and reason) on both routes.
        limit = httpx.get(f"{url}/release", timeout=10).json()["serving"]["max_bytes"]
        for name, kwargs in raw_bad_requests(images[0], limit):
            raw = client.post(f"{backend}/invocations", **kwargs)
            upload = client.post(f"{backend}/classify", files={"file": ("x", kwargs["content"], "image/jpeg")})
            assert raw.status_code == upload.status_code and 400 <= raw.status_code < 500, (name, raw.text)
            assert raw.json()["reason"] == upload.json()["reason"], name
        bad_json = client.post(f"{backend}/invocations", json={"picture": "x"})
        assert bad_json.status_code == 400 and bad_json.json()["reason"] == "bad_json"
        assert client.get(f"{backend}/readyz").status_code == 200


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
    """Zero failed requests while B and C are promoted and rolled back; two rollbacks: C → B → A (issue 12, 2).

    Sixteen clients whose uploads each take about two seconds send all through B's promotion (issue 14, 2).
    """
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
    slow = [SlowUploader(url, images[i % len(images)]) for i in range(16)]  # issue 14, acceptance 2
    for client in [hammer, *slow]:
        client.start()
    release_b = run_deploy(ROOT, configs["b"], versions=releases.good, by="tester")
    hammer.finish()
    for client in slow:
        client.finish()
    assert hammer.ok > 0 and not hammer.failures, hammer.failures[:5]
    assert all(c.ok > 0 and not c.failures for c in slow), [c.failures[:3] for c in slow]
    assert {production, release_b} <= set().union(*(c.releases for c in slow))  # uploads spanned the switch
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


def test_bentoml_client_and_curl_get_the_same_answer(production, url, images, tmp_path):
    """Issue 14, acceptance 6: `/classify` is a BentoML API: its own client and a curl multipart POST agree."""
    import json
    import shutil
    import subprocess

    import bentoml

    image = tmp_path / "x.jpg"
    image.write_bytes(images[1])
    with bentoml.SyncHTTPClient(url) as client:
        assert "classify" in client.endpoints
        served = client.classify(file=image)
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-sS", "-F", f"file=@{image}", f"{url}/classify"], capture_output=True, check=True
        )
        by_curl = json.loads(out.stdout)
    else:  # the same multipart POST without curl
        with httpx.Client(timeout=30) as client:
            by_curl = classify(client, url, images[1]).json()
    keep = ("species", "group", "release", "versions")
    assert {k: served[k] for k in keep} == {k: by_curl[k] for k in keep}
    assert served["request_id"] != by_curl["request_id"]


def serving_processes() -> dict[str, list]:
    """The gateway's and the production backend's processes (psutil), from the supervised programs."""
    import psutil

    from fieldguide.serve.servers import ServingState
    from fieldguide.serve.supervise import Supervisor
    from registry.promotion import serving_dir

    state = ServingState.load(serving_dir())
    supervisor = Supervisor(serving_dir())
    out = {}
    for role, server in (("gateway", state.gateway), ("service", state.production)):
        shim = psutil.Process(supervisor.status(server.program).pid)
        out[role] = shim.children(recursive=True)
    return out


def resident_mb(processes: list) -> float:
    return sum(p.memory_info().rss for p in processes) / 2**20


def test_http_fronts_of_production_carry_no_torch(production, url, images):
    """Issue 20, acceptance 3: the live HTTP front processes have no torch library mapped (the model worker has)."""
    from concurrent.futures import ThreadPoolExecutor

    from fieldguide.serve.servers import ServingState, service_workers, torch_loaded
    from fieldguide.serve.supervise import Supervisor
    from registry.promotion import serving_dir

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:  # concurrent: both fronts answer
        statuses = list(pool.map(lambda i: classify(client, url, images[i % len(images)]).status_code, range(32)))
    assert statuses == [200] * 32
    production = ServingState.load(serving_dir()).production
    workers = service_workers(Supervisor(serving_dir()).status(production.program).pid)
    assert len(workers["fieldguide"]) == 2 and len(workers["fieldguide-model"]) == 1, workers
    assert not [p.pid for p in workers["fieldguide"] if torch_loaded(p)]
    assert torch_loaded(workers["fieldguide-model"][0])
    assert all(p.memory_full_info().pss < 250 * 2**20 for p in workers["fieldguide"])


def test_chunked_floods_are_refused_at_the_limit_without_buffering(production, configs, url, images):
    """Issue 14, acceptance 1: eight concurrent 512 MiB chunked uploads → 413 within 5 s, at most limit + 1 MiB read.

    The eight go to the production URL (the gateway refuses them) and two more straight to the live BentoML server
    (its own edge refuses them), all from raw sockets that read while they send. After the 413 the server reads
    no more: the connection is closed, so the client cannot push more than what its socket buffers take.
    """
    import json

    from fieldguide.serve.servers import ServingState
    from registry.promotion import serving_dir
    from tests.clients import chunked_flood

    processes = serving_processes()
    before = {role: resident_mb(procs) for role, procs in processes.items()}
    backend = ServingState.load(serving_dir()).production.port
    production_port = int(url.rsplit(":", 1)[1])
    results: dict[int, object] = {}

    def flood(i: int) -> None:
        results[i] = chunked_flood(production_port if i < 8 else backend, 512 * 2**20, timeout_s=30)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 10
    for i, result in sorted(results.items()):
        assert result.status == 413 and result.seconds < 5, (i, result.status, result.seconds, result.body[:300])
        body = json.loads(result.body)
        assert body["reason"] == "too_large" and body["request_id"], body
        assert body["received"] <= body["limit"] + 2**20, body
        assert result.sent + result.after < body["limit"] + 32 * 2**20, (i, result.sent, result.after)
    after = {role: resident_mb(procs) for role, procs in processes.items()}
    assert all(after[role] - before[role] < 50 for role in before), (before, after)
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{url}/readyz").status_code == 200
        assert classify(client, url, images[0]).status_code == 200


@pytest.fixture
def fragile_server(production, tmp_path):
    """The production release's models re-served with a 5 ms batching budget and one child in memory at a time.

    Served unsupervised on a free port; stopped after the test.
    """
    import json
    import shutil
    from pathlib import Path

    import bentoml

    from fieldguide.ports import free_port
    from fieldguide.serve.release import RELEASE_FILE
    from fieldguide.serve.servers import release_folder, start_bento, stop

    release_id = f"{production}-fragile"
    with bentoml.models.create(f"fieldguide-release:{release_id}") as model:
        shutil.copytree(release_folder(production), model.path, dirs_exist_ok=True)
        data = json.loads((Path(model.path) / RELEASE_FILE).read_text())
        data["id"] = release_id
        data["serving"] |= {"max_latency_ms": 5, "max_children_in_memory": 1}
        (Path(model.path) / RELEASE_FILE).write_text(json.dumps(data))
    server = start_bento("bentos.service:Classifier", release_id, free_port(), tmp_path / "logs", 180)
    yield server, Path(release_folder(release_id))
    stop(server)
    bentoml.models.delete(f"fieldguide-release:{release_id}")


def test_shed_load_is_503_with_retry_after_and_a_model_failure_is_500_with_its_request_id(fragile_server, images):
    """Issue 14, acceptance 4: the batcher past max_latency_ms → 503 + Retry-After; a failure in the model → 500.

    The failure is real: a child's weights file disappears from the release folder while children are loaded on
    demand (one in memory), so the model service fails loading it; the 500 names a request id found in the log.
    """
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    server, folder = fragile_server
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda j: classify(client, server.url, j), images * 12))
        codes = sorted({a.status_code for a in answers})
        assert set(codes) <= {200, 503} and 503 in codes, codes
        shed = next(a for a in answers if a.status_code == 503)
        assert shed.headers["retry-after"] and shed.json()["reason"] == "overloaded", shed.text

        for child in folder.glob("child-*/model.safetensors"):
            child.unlink()
        failed = classify(client, server.url, images[0])
    assert failed.status_code == 500, failed.text
    body = failed.json()
    assert body["reason"] == "model_error" and body["request_id"] == failed.headers["x-request-id"], body
    assert body["request_id"] in Path(server.log).read_text()


def restarts_in_status() -> str:
    """The production backend's line of `python run.py status`."""
    res = run_cli("status")
    assert res.returncode == 0, res.stderr[-2000:]
    return next(line for line in res.stdout.splitlines() if line.startswith("production (backend)"))


def recovered(url: str, jpeg: bytes, expected: dict, status_before: str, seconds: float) -> float:
    """Seconds until `status` shows a restart and `/classify` answers `expected` again; fails after `seconds`."""
    import time

    start = time.monotonic()
    restarted = False
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - start < seconds:
            restarted = restarted or restarts_in_status() != status_before
            try:
                resp = classify(client, url, jpeg)
                if restarted and resp.status_code == 200 and {k: resp.json()[k] for k in expected} == expected:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise AssertionError(f"within {seconds} s: restart in status {restarted}; /classify did not answer correctly")


@pytest.mark.parametrize("target", ["bentoml serve parent", "model worker"])
def test_killed_production_process_is_restarted_by_its_supervisor(production, url, images, target):
    """Issue 14, acceptance 3: kill -9 of the live server's parent (or its model worker) → answering again in 30 s.

    No command is run: supervisord restarts the server (BentoML's arbiter the worker), and `status` shows it.
    """
    import signal

    with httpx.Client(timeout=30) as client:
        expected = {k: v for k, v in classify(client, url, images[0]).json().items() if k in ("species", "group")}
    service = serving_processes()["service"]
    if target == "bentoml serve parent":
        victim = next(p for p in service if "serve" in p.cmdline() and any("bentoml" in c for c in p.cmdline()))
    else:
        victim = next(p for p in service if "fieldguide-model" in p.cmdline())
    before = restarts_in_status()
    os.kill(victim.pid, signal.SIGKILL)
    seconds = recovered(url, images[0], expected, before, 30)
    after = restarts_in_status()
    print(f"{target} killed: answering correctly again after {seconds:.1f} s; {after}")
    assert restart_count(after) > restart_count(before) and "(last at" in after, (before, after)


def restart_count(status_line: str) -> int:
    return int(status_line.split("restarts ", 1)[1].split()[0])


def test_stop_leaves_no_process_and_no_bound_port(production, home, configs):
    """Issue 14, acceptance 3: after `python run.py stop` nothing the project started runs or listens."""
    import psutil

    from fieldguide.config import load_yaml
    from fieldguide.ports import port_in_use
    from fieldguide.serve.servers import ServingState
    from registry.promotion import serving_dir

    state = ServingState.load(serving_dir())
    ports = [s.port for s in (state.gateway, state.production, state.staging) if s is not None]
    params = load_yaml(configs["a"])["parameters"]
    ports += [params["production_port"], params["staging_port"]]
    res = run_cli("stop")
    assert res.returncode == 0 and "supervisord" in res.stdout, res.stdout + res.stderr[-2000:]
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}

    def ours(p: psutil.Process) -> bool:
        try:
            return p.pid not in mine and p.environ().get("FIELDGUIDE_HOME") == str(home)
        except psutil.Error:
            return False

    left = [(p.pid, " ".join(p.cmdline())[:200]) for p in psutil.process_iter() if ours(p)]
    left = [(pid, cmd) for pid, cmd in left if "from multiprocessing." not in cmd]  # this test process's helpers
    assert not left, left
    assert not [p for p in ports if port_in_use(p)], ports
