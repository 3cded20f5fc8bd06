"""Test harness: every test session gets its own ZenML config/store, local stack and MLflow store in a temp dir."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import pytest

if TYPE_CHECKING:
    from fieldguide.evaluate.two_stage import TwoStageTable

ROOT = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="fieldguide-tests-"))
# What boto3 needs to talk to moto's server (any key works; never real credentials).
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server (S3, SageMaker, ECR, IAM, CloudWatch … over HTTP) on a free loopback port; its URL."""
    from moto.server import ThreadedMotoServer

    from fieldguide.ports import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def moto_env(url: str, region: str = "us-east-1") -> dict[str, str]:
    """The environment that points boto3 (in this process or a subprocess) at moto's server at `url`."""
    return {**MOTO_CREDENTIALS, "AWS_DEFAULT_REGION": region, "AWS_ENDPOINT_URL": url}


def moto_client(service: str, url: str, region: str = "us-east-1") -> Any:
    """A boto3 client of `service` talking to moto's server at `url`."""
    import boto3

    key, secret = MOTO_CREDENTIALS.values()
    return boto3.client(
        service, endpoint_url=url, region_name=region, aws_access_key_id=key, aws_secret_access_key=secret
    )


def state_env(home: Path) -> dict[str, str]:
    """Environment that puts every piece of state (ZenML store, artifacts, MLflow, BentoML) under `home`."""
    (home / "no-repo").mkdir(parents=True, exist_ok=True)
    return {
        "FIELDGUIDE_HOME": str(home),
        "ZENML_CONFIG_PATH": str(home / "zenml"),
        # An empty folder: never the developer's .zen repository config.
        "ZENML_REPOSITORY_PATH": str(home / "no-repo"),
        "BENTOML_HOME": str(home / "bentoml"),
    }


def pytest_configure(config: pytest.Config) -> None:
    """Point ZenML/MLflow/BentoML at the session's temp dir before anything imports them."""
    os.environ.update(
        {
            **state_env(_SESSION_HOME),
            "ZENML_ANALYTICS_OPT_IN": "false",
            "ZENML_ENABLE_RICH_TRACEBACK": "false",
            "BENTOML_DO_NOT_TRACK": "true",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
        }
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def home() -> Path:
    """The session's state folder (ZenML store, artifacts, MLflow store)."""
    return _SESSION_HOME


@pytest.fixture(scope="session")
def local_stack() -> str:
    """The fieldguide-local stack, registered and active in the session's isolated store."""
    from stacks import activate_stack

    return activate_stack("local", ROOT)


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python run.py ARGS` as a user would, with the session's environment."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo catalog with every kind of planted bad row (3 groups x 3 species x 48 images, 64 px)."""
    from fieldguide.data.demo import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, ["succulents", "ferns", "flowers"], 3, 48, size=64, bad_fraction=0.08, seed=1, progress=False)
    return out / "catalog.csv"


def deploy_config(path: Path, like: Path | None = None, **serving: object) -> Path:
    """Write a deploy config for tests: tests/configs/deploy_test.yaml (or `like`) on free production/staging ports.

    A config written with `like` keeps its ports (the same production URL), with `serving` overrides.
    """
    import yaml

    from fieldguide.config import load_yaml
    from fieldguide.ports import free_port

    data = load_yaml(like or ROOT / "tests/configs/deploy_test.yaml")
    params = data["parameters"]
    if like is None:
        params["production_port"], params["staging_port"] = free_port(), free_port()
    params["serving"] = {**params.get("serving", {}), **serving}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


CHILD_TINY = ROOT / "tests" / "configs" / "child_tiny.yaml"


@pytest.fixture(scope="session")
def shard_set_id(local_stack, demo_catalog):
    from pipelines.runner import output_id, run_data

    return output_id(run_data(ROOT, None, str(demo_catalog), no_cache=False), "build_shards", "shard_set")


@pytest.fixture(scope="session")
def dataset(shard_set_id):
    """The session's demo dataset (pipelines.runner.Dataset)."""
    from zenml.client import Client

    from pipelines.runner import Dataset

    return Dataset.of(Client().get_artifact_version(shard_set_id))


@pytest.fixture(scope="session")
def child_run(dataset):
    from fieldguide.keys import ModelKey
    from pipelines.runner import run_model

    run = run_model(ROOT, ModelKey.child("succulents"), str(CHILD_TINY), False, dataset)
    from zenml.client import Client

    return Client().get_pipeline_run(run.id)


def register_copy(version_id: str, name: str, label: str, change: str = "") -> str:
    """Register a copy of a model version as a new version of `name`, its quality changed on purpose.

    change: "" (an exact copy), "degenerate" (answers its first class for every image) or "swap" (the first two
    classes' outputs swapped: a plausible but worse model).
    """
    import torch
    from zenml import Model, link_artifact_to_model, save_artifact
    from zenml.client import Client
    from zenml.enums import ArtifactType

    from steps.materializers import ModelBundleMaterializer

    good = Client().get_model_version(model_version_name_or_number_or_id=UUID(version_id))
    bundle = good.get_model_artifact("model").load()
    head = bundle.model.get_classifier()
    with torch.no_grad():
        if change == "degenerate":
            head.weight.zero_()
            head.bias.copy_(torch.tensor([20.0] + [0.0] * (len(head.bias) - 1)))
        elif change == "swap":
            head.weight[[0, 1]] = head.weight[[1, 0]].clone()
            head.bias[[0, 1]] = head.bias[[1, 0]].clone()
    Client().create_model_version(name, name=label, description=f"test: copy of v{good.number}, change={change!r}")
    artifact = save_artifact(
        bundle, name="model", materializer=ModelBundleMaterializer, artifact_type=ArtifactType.MODEL
    )
    link_artifact_to_model(artifact, model=Model(name=name, version=label))
    return str(Client().get_model_version(name, label).id)


def two_stage(versions: dict[str, str], shard_set_id: str, route_k: int = 2) -> TwoStageTable:
    """The two-stage table of model versions (name → id) on a shard set's test split, in process."""
    from zenml.client import Client

    from fieldguide.evaluate.two_stage import TwoStageTable, two_stage_hits
    from registry.versions import get_version, load_model

    bundles = {name: load_model(get_version(vid)) for name, vid in versions.items()}
    children = {name.removeprefix("child-"): b for name, b in bundles.items() if name != "router"}
    shard_set = Client().get_artifact_version(shard_set_id).load()
    return TwoStageTable.of(two_stage_hits(bundles["router"], children, shard_set, (route_k,)))


def end_to_end(table: TwoStageTable) -> float:
    return next(iter(table.end_to_end.values()))


@dataclass
class Releases:
    """The session's deterministic release fixture: model versions (name → id) of each kind, with their accuracy."""

    good: dict[str, str]
    weak: dict[str, str]  # two children with two species swapped: passes its own checks, evaluates far below good
    degenerate: dict[str, str]  # child-succulents answers one species; still better end to end than `weak`
    accuracy: dict[str, float]  # end-to-end top-1 at route_k 2 on the test split, per kind


@pytest.fixture(scope="session")
def releases(shard_set_id, dataset) -> Releases:
    """A router and one child per group trained with fixed seeds, plus copies of controlled quality.

    Built once per session and reused by every serving and rollout test; the accuracies every test relies on are
    asserted here, so they hold on every machine or fail here, naming the figure.
    """
    from zenml.client import Client

    from fieldguide.evaluate.two_stage import _probs
    from fieldguide.keys import release_members
    from pipelines.runner import run_model
    from registry.versions import get_version, load_model

    good: dict[str, str] = {}
    for key in release_members(dataset.groups):  # children from scratch (child_serve.yaml): the same in any order
        config = ROOT / "tests/configs" / f"{key.pipeline}_serve.yaml"
        run = run_model(ROOT, key, str(config), False, dataset)
        good[key.name] = str(Client().get_pipeline_run(run.id).model_version.id)
    weak = dict(good)
    for name in ("child-ferns", "child-flowers"):
        weak[name] = register_copy(good[name], name, f"weak-{name}", change="swap")
    degenerate = good | {
        "child-succulents": register_copy(good["child-succulents"], "child-succulents", "degenerate", "degenerate")
    }
    table = two_stage(good, shard_set_id)
    accuracy = {
        kind: end_to_end(two_stage(v, shard_set_id)) for kind, v in (("weak", weak), ("degenerate", degenerate))
    }
    accuracy["good"] = end_to_end(table)
    shard_set = Client().get_artifact_version(shard_set_id).load()
    router = load_model(get_version(good["router"]))
    p_group, _ = _probs(router, shard_set)  # the test split, as staging sends it
    routed = Counter(router.meta.classes[int(g)] for g in p_group.argmax(1))
    print(f"release fixture: router {table.router_acc:.3f}, end to end {accuracy}, test images routed {routed}")
    assert routed["succulents"] >= 12, routed  # room for the degenerate check (10 routed images)
    assert table.router_acc >= 0.85, table
    assert accuracy["good"] >= 0.6, accuracy
    assert accuracy["weak"] <= accuracy["good"] - 0.15, accuracy
    assert accuracy["degenerate"] >= accuracy["weak"] + 0.05, accuracy
    return Releases(good, weak, degenerate, accuracy)


@pytest.fixture(scope="session")
def release_versions(releases) -> dict[str, str]:
    """The good release's model versions (model name → version id)."""
    return releases.good


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium: FIELDGUIDE_CHROMIUM, else Debian's `chromium`, else Playwright's own (CI installs it)."""
    import shutil

    from playwright.sync_api import sync_playwright

    executable = os.environ.get("FIELDGUIDE_CHROMIUM") or shutil.which("chromium") or None
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()
