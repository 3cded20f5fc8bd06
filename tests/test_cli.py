from tests.conftest import run_cli


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
