"""S3 catalogs against a real S3-compatible HTTP server (moto's server mode) on loopback."""

import json

import pytest

from tests.conftest import moto_client, moto_env, moto_server, run_cli


@pytest.fixture(scope="module")
def s3(demo_catalog):
    with moto_server() as url:
        env = moto_env(url)
        client = moto_client("s3", url)
        client.create_bucket(Bucket="plants")
        root = demo_catalog.parent
        for path in root.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), "plants", f"cat/{path.relative_to(root).as_posix()}")
        yield env


def test_s3_csv_catalog_matches_local(s3, demo_catalog):
    local = run_cli("data", "qa", str(demo_catalog), "--json")
    remote = run_cli("data", "qa", "s3://plants/cat/catalog.csv", "--json", env=s3)
    assert remote.returncode == 0, remote.stderr
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    assert b["valid"] == a["valid"] and b["rejected"] == a["rejected"]
    assert b["dataset_version"] == a["dataset_version"]  # content-addressed: same images, same version
    assert all(r["uri"].startswith("s3://plants/cat/") for r in b["rows"])


def test_s3_image_folder_catalog(s3):
    res = run_cli("data", "qa", "s3://plants/cat/images", "--json", env=s3)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["valid"] > 0
    assert "incoming" not in {r.get("label") for r in report["rows"]}


def test_s3_missing_catalog_is_clear(s3):
    res = run_cli("data", "qa", "s3://plants/nope/catalog.csv", env=s3)
    assert res.returncode == 2
    assert "catalog not found: s3://plants/nope/catalog.csv" in res.stderr
