"""Which dataset a run uses: the last data pipeline run's (cached runs included), or the catalog given."""

import re

import pytest

from tests.conftest import ROOT, run_cli

CHILD_MIN = str(ROOT / "tests/configs/child_min.yaml")


def printed_dataset(stdout: str) -> str:
    found = re.findall(r"^dataset (ds-[0-9a-f]+)", stdout, flags=re.MULTILINE)
    assert found, stdout[-2000:]
    return found[-1]


def trained_on(stdout: str) -> str:
    """The dataset version recorded on the model version a `--pipeline child` run printed."""
    from zenml.client import Client

    (label,) = re.findall(r"(child-succulents v\d+): test_top1", stdout) or re.findall(
        r"same weights as (child-succulents v\d+)", stdout
    )
    name, number = label.split(" v")
    return Client().get_model_version(name, int(number)).run_metadata["dataset_version"]


@pytest.mark.slow
def test_runs_use_the_last_data_runs_dataset_or_the_catalog_given(releases, demo_catalog, tmp_path):
    """Issue 12, acceptance 5: data on A, then B, then A again (cached) → child trains on A; --catalog B → on B.

    B has two species per group, so its child also shows that a release evaluation names a model whose classes
    differ from the dataset's, in one line.
    """
    from fieldguide.data.demo import generate
    from pipelines.runner import run_data

    other = generate(
        tmp_path / "b", ["succulents", "ferns", "flowers"], 2, 10, size=64, bad_fraction=0, seed=7, progress=False
    )
    try:
        res = run_cli("--pipeline", "data", "--catalog", str(demo_catalog))
        assert res.returncode == 0, res.stderr[-2000:]
        a = printed_dataset(res.stdout)
        res = run_cli("--pipeline", "data", "--catalog", str(other.catalog))
        assert res.returncode == 0, res.stderr[-2000:]
        b = printed_dataset(res.stdout)
        assert a != b
        res = run_cli("--pipeline", "data", "--catalog", str(demo_catalog))
        assert res.returncode == 0 and printed_dataset(res.stdout) == a

        res = run_cli("--pipeline", "child", "--group", "succulents", "--config", CHILD_MIN)
        assert res.returncode == 0, res.stderr[-2000:]
        assert printed_dataset(res.stdout) == a and trained_on(res.stdout) == a

        res = run_cli(
            "--pipeline", "child", "--catalog", str(other.catalog), "--group", "succulents", "--config", CHILD_MIN
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert printed_dataset(res.stdout) == b and trained_on(res.stdout) == b
        number = re.findall(r"child-succulents v(\d+): test_top1", res.stdout)[0]

        res = run_cli("evaluate-release", "--dataset", a, "--child", f"succulents={number}")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("error: child-succulents knows species") and a[:12] in line, line

        res = run_cli("--pipeline", "child", "--dataset", b[:10], "--group", "nope", "--config", CHILD_MIN)
        assert res.returncode == 2 and "unknown group 'nope'" in res.stderr
        res = run_cli("--pipeline", "child", "--dataset", "ds-0000", "--group", "succulents")
        assert res.returncode == 2 and "no dataset version 'ds-0000'" in res.stderr
    finally:
        run_data(ROOT, None, str(demo_catalog), no_cache=False)  # later tests use the demo dataset by default
