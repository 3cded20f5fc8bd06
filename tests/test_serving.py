"""The BentoML service behind a real `bentoml serve`, the deploy pipeline, blue/green promotion and rollback."""

from __future__ import annotations

import random
import threading
from uuid import UUID

import httpx
import pytest
import torch

from fieldguide.errors import FieldguideError
from fieldguide.staging import png_header
from tests.conftest import ROOT, run_cli

DEPLOY_A = str(ROOT / "tests/configs/deploy_test.yaml")
DEPLOY_B = str(ROOT / "tests/configs/deploy_test_b.yaml")
PRODUCTION = "http://127.0.0.1:3900"


@pytest.fixture(scope="module")
def images(demo_catalog) -> list[bytes]:
    """A few catalog JPEGs."""
    files = sorted((demo_catalog.parent / "images").rglob("*.jpg"))
    return [f.read_bytes() for f in files[::25][:8]]


@pytest.fixture(scope="module")
def production(release_versions):
    """Release A in production (deployed through the deploy pipeline); every server stopped afterwards."""
    from pipelines.rollout import run_deploy, stop_all

    run_deploy(ROOT, DEPLOY_A, versions=release_versions, by="tester")
    yield release_id()
    stop_all()


def release_id() -> str:
    return httpx.get(f"{PRODUCTION}/release", timeout=10).json()["id"]


def classify(client: httpx.Client, jpeg: bytes) -> httpx.Response:
    return client.post(f"{PRODUCTION}/classify", files={"file": ("x.jpg", jpeg, "image/jpeg")})


class Hammer(threading.Thread):
    """A client sending requests to production until stopped, counting every failure."""

    def __init__(self, jpeg: bytes) -> None:
        super().__init__(daemon=True)
        self.jpeg = jpeg
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.releases: set[str] = set()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop_event.is_set():
                try:
                    resp = classify(client, self.jpeg)
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


def test_production_answers_species_group_and_versions(production, images):
    """Acceptance 1: POST an image to the production URL → species, group, versions."""
    with httpx.Client(timeout=30) as client:
        body = classify(client, images[0]).json()
    assert len(body["species"]) == 5 and 0 < body["species"][0]["probability"] <= 1
    assert body["group"]["name"] in {"ferns", "flowers", "succulents"}
    assert set(body["versions"]) == {"router", "child-ferns", "child-flowers", "child-succulents"}
    assert body["release"] == production and body["latency_ms"] > 0
    info = httpx.get(f"{PRODUCTION}/release", timeout=10).json()
    assert info["status"] in ("candidate", "production") and info["evaluation"]
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


def test_thousand_malformed_requests_get_4xx_and_server_stays_healthy(production, images):
    """Acceptance 4."""
    rng = random.Random(0)
    codes: dict[int, int] = {}
    with httpx.Client(timeout=30) as client:
        for i in range(1000):
            code = client.post(f"{PRODUCTION}/classify", **malformed(rng, images[i % len(images)], i)).status_code
            codes[code] = codes.get(code, 0) + 1
        assert all(400 <= c < 500 for c in codes), codes
        assert client.get(f"{PRODUCTION}/readyz").status_code == 200
        assert classify(client, images[0]).status_code == 200
    assert sum(codes.values()) == 1000


def register_copy(version_id: str, name: str, label: str, broken: bool) -> str:
    """Register a copy of a model version as a new version (a broken copy always answers its first class)."""
    from zenml import Model, link_artifact_to_model, save_artifact
    from zenml.client import Client
    from zenml.enums import ArtifactType

    from steps.materializers import ModelBundleMaterializer

    good = Client().get_model_version(model_version_name_or_number_or_id=UUID(version_id))
    bundle = good.get_model_artifact("model").load()
    if broken:
        head = bundle.model.get_classifier()
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor([20.0] + [0.0] * (len(head.bias) - 1)))
    Client().create_model_version(name, name=label, description=f"test: copy of v{good.number}, broken={broken}")
    artifact = save_artifact(
        bundle, name="model", materializer=ModelBundleMaterializer, artifact_type=ArtifactType.MODEL
    )
    link_artifact_to_model(artifact, model=Model(name=name, version=label))
    return str(Client().get_model_version(name, label).id)


def test_release_failing_staging_never_reaches_production(production, release_versions, images):
    """Acceptance 2: children that always predict one class fail staging; production answers throughout."""
    from zenml.client import Client

    from pipelines.rollout import run_deploy, status_rows
    from pipelines.runner import pipeline_errors
    from steps.registry import release_record
    from steps.registry import release_versions as releases

    broken = {
        n: register_copy(v, n, f"broken-{n}", broken=True) if n.startswith("child-") else v
        for n, v in release_versions.items()
    }
    before = len(releases())
    hammer = Hammer(images[1])
    hammer.start()
    with pytest.raises(FieldguideError, match="Pipeline run has failed"), pipeline_errors():
        run_deploy(ROOT, DEPLOY_A, versions=broken, by="tester")
    hammer.finish()
    assert hammer.ok > 0 and not hammer.failures, hammer.failures[:5]
    assert hammer.releases == {production} and release_id() == production
    failed = releases()[before:]
    assert len(failed) == 1
    record = release_record(failed[0].name)
    assert record["status"] == "failed" and "[FAIL] accuracy" in record["failure"]
    staging = next(r for r in status_rows() if r["role"] == "staging")
    assert staging["health"] == "not running"
    for name, version_id in broken.items():
        if name.startswith("child-"):
            assert Client().get_model_version(model_version_name_or_number_or_id=version_id).stage != "production"


def test_promotion_without_failed_requests_then_rollback_restores_answers(production, release_versions, images):
    """Acceptance 5 (zero failed requests during a promotion) and 3 (rollback restores the previous answers)."""
    from pipelines.rollout import rollback, run_deploy

    def answers() -> list[list[tuple[str, float]]]:
        with httpx.Client(timeout=30) as client:
            return [
                [(s["name"], round(s["probability"], 3)) for s in classify(client, j).json()["species"]] for j in images
            ]

    before = answers()
    assert all(len(a) == 5 for a in before)
    hammer = Hammer(images[2])
    hammer.start()
    run_deploy(ROOT, DEPLOY_B, versions=release_versions, by="tester")
    hammer.finish()
    assert hammer.ok > 0 and not hammer.failures, hammer.failures[:5]
    release_b = release_id()
    assert release_b != production and production in hammer.releases
    after_b = answers()
    assert all(len(a) == 3 for a in after_b) and after_b != before

    hammer = Hammer(images[3])
    hammer.start()
    assert rollback(ROOT, DEPLOY_A) == production
    hammer.finish()
    assert not hammer.failures, hammer.failures[:5]
    assert release_id() == production
    assert answers() == before
    listing = run_cli("releases").stdout
    assert release_b in listing and "archived" in listing


def test_watch_rolls_out_an_approval_made_in_the_dashboard(production, release_versions):
    """`watch` picks up a version tagged `approved` (as the dashboard does) and runs the deploy pipeline for it."""
    from zenml import log_metadata
    from zenml.client import Client

    from fieldguide.registry import initial_approval
    from steps.registry import release_record
    from steps.registry import release_versions as releases

    # A new, evaluated version of child-succulents (a copy of the production one, so staging passes).
    version_id = register_copy(release_versions["child-succulents"], "child-succulents", "retrained", broken=False)
    gate = {"passed": True, "reasons": []}
    log_metadata(metadata={"gate": gate, "approval": initial_approval(gate)}, model_version_id=UUID(version_id))
    version = Client().get_model_version(model_version_name_or_number_or_id=UUID(version_id))
    Client().update_model_version(version.model.id, version.id, add_tags=["approved"])
    before = {v.name for v in releases()}
    res = run_cli("watch", "--once", "--config", DEPLOY_A, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"watch: child-succulents v{version.number} approved; rolling out" in res.stdout
    new = [v.name for v in releases() if v.name not in before]
    assert len(new) == 1
    record = release_record(new[0])
    assert record["versions"]["child-succulents"] == f"v{version.number}" and record["status"] == "production"
    after = Client().get_model_version(model_version_name_or_number_or_id=version.id)
    assert after.run_metadata["rollout"] and after.run_metadata["approval"]["by"] == "dashboard"
    assert after.stage == "production" and release_id() == new[0]
    res = run_cli("watch", "--once", "--config", DEPLOY_A)
    assert "rolling out" not in res.stdout  # each approval rolls out once
