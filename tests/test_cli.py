from tests.conftest import ROOT, run_cli


def test_help_lists_pipelines_and_options():
    res = run_cli("--help")
    assert res.returncode == 0
    for word in ("--pipeline", "data", "parent", "child", "all", "--group", "--config", "--stack", "--no-cache"):
        assert word in res.stdout
    assert "\\b" not in res.stdout and "Examples:" in res.stdout


def test_unknown_pipeline_is_one_line_exit_2():
    res = run_cli("--pipeline", "nope")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0]
    assert "Traceback" not in res.stderr


def test_unknown_option_is_one_line_exit_2():
    res = run_cli("--colour", "green")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert "--colour" in res.stderr


def test_missing_catalog_is_one_line_exit_2(tmp_path):
    res = run_cli("data", "qa", str(tmp_path / "absent.csv"))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: catalog not found")
    assert len(res.stderr.strip().splitlines()) == 1


def test_catalog_with_wrong_columns_exit_2(tmp_path):
    bad = tmp_path / "cat.csv"
    bad.write_text("path,species\na.jpg,x\n")
    res = run_cli("data", "qa", str(bad))
    assert res.returncode == 2
    assert "lacks column(s) uri, label" in res.stderr


def test_empty_catalog_exit_2(tmp_path):
    bad = tmp_path / "cat.csv"
    bad.write_text("")
    res = run_cli("data", "qa", str(bad))
    assert res.returncode == 2
    assert "empty" in res.stderr


def test_registry_cli_loads_neither_torch_nor_steps():
    """Issue 12, acceptance 4: `python -X importtime run.py models` imports no torch, steps or pipelines."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    res = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "run.py"), "models"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "registry.versions" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "torchvision", "timm", "steps", "pipelines"))
    assert not heavy, heavy


def test_github_workflows_validate_against_githubs_schema(tmp_path):
    """The workflows cannot run here: `make test` checks them against GitHub's schema (a typo fails it)."""
    import shutil
    import subprocess

    check = [str(ROOT / ".venv/bin/check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    workflows = sorted(str(p) for p in (ROOT / ".github/workflows").glob("*.yml"))
    ok = subprocess.run([*check, *workflows], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "ci.yml"
    shutil.copy(ROOT / ".github/workflows/ci.yml", broken)
    broken.write_text(broken.read_text().replace("runs-on:", "run-on:", 1))
    bad = subprocess.run([*check, str(broken)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "run-on" in bad.stdout + bad.stderr, bad.stdout
