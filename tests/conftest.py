"""Test harness: every test session gets its own ZenML config/store, local stack and MLflow store in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="fieldguide-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    """Point ZenML/MLflow/BentoML at the session's temp dir before anything imports them."""
    (_SESSION_HOME / "no-repo").mkdir(exist_ok=True)
    os.environ.update(
        {
            "FIELDGUIDE_HOME": str(_SESSION_HOME),
            "ZENML_CONFIG_PATH": str(_SESSION_HOME / "zenml"),
            # An empty folder: the session never reads or writes the developer's .zen repository config.
            "ZENML_REPOSITORY_PATH": str(_SESSION_HOME / "no-repo"),
            "BENTOML_HOME": str(_SESSION_HOME / "bentoml"),
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
    """A small demo catalog with every kind of planted bad row (3 groups x 3 species x 24 images, 64 px)."""
    from fieldguide.demo import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, ["succulents", "ferns", "flowers"], 3, 24, size=64, bad_fraction=0.08, seed=1, progress=False)
    return out / "catalog.csv"


CHILD_TINY = ROOT / "tests" / "configs" / "child_tiny.yaml"


@pytest.fixture(scope="session")
def shard_set_id(local_stack, demo_catalog):
    from pipelines.runner import output_id, run_data

    return output_id(run_data(ROOT, None, str(demo_catalog), no_cache=False), "build_shards", "shard_set")


@pytest.fixture(scope="session")
def child_run(shard_set_id):
    from pipelines.runner import run_child

    (run,) = run_child(ROOT, "succulents", str(CHILD_TINY), no_cache=False, shard_set_id=shard_set_id)
    from zenml.client import Client

    return Client().get_pipeline_run(run.id)


@pytest.fixture(scope="session")
def release_versions(shard_set_id) -> dict[str, str]:
    """A router and one child per group, trained well enough to serve (model name → model version id)."""
    from zenml.client import Client

    from pipelines.runner import run_child, run_parent

    runs = [run_parent(ROOT, str(ROOT / "tests/configs/parent_serve.yaml"), False, shard_set_id=shard_set_id)]
    runs += run_child(ROOT, "all", str(ROOT / "tests/configs/child_serve.yaml"), False, shard_set_id=shard_set_id)
    out = {}
    for run in runs:
        version = Client().get_pipeline_run(run.id).model_version
        out[version.model.name] = str(version.id)
    return out
