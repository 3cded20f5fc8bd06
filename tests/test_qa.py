"""QA: every reason code, demo catalog acceptance, image conversions, folders, manifests, recreate, diff, safe paths."""

import csv
import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldguide.config import QARules, from_dict
from fieldguide.data.catalog import CatalogRow, allowed_roots, read_catalog, uri_refusal
from fieldguide.data.demo import BAD_KINDS
from fieldguide.data.images import ImageLimits, load_rgb, open_checked, to_rgb
from fieldguide.data.manifest import Manifest, dataset_version_id, destination, recreate
from fieldguide.data.qa import REASONS, ValidImage, run_qa
from fieldguide.data.qa_report import qa_catalog, qa_html
from fieldguide.errors import ConfigError, FieldguideError
from tests.conftest import run_cli


def _jpeg(color=(10, 200, 30), size=(48, 40), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_planted_bad_rows_get_exactly_their_reason(tmp_path):
    """Acceptance: every planted bad row rejected with the right reason, no good row rejected."""
    out = tmp_path / "cat"
    res = run_cli(
        "data",
        "demo",
        "--out",
        str(out),
        "--groups",
        "succulents,ferns",
        "--species-per-group",
        "2",
        "--images-per-species",
        "20",
        "--size",
        "48",
        "--bad-fraction",
        "0.3",
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("data", "qa", str(out / "catalog.csv"), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    planted = {r["uri"]: r["expected_reason"] for r in csv.DictReader((out / "bad_rows.csv").open())}
    got = {str(Path(r["uri"]).relative_to(out.resolve())): r["reason"] for r in report["rows"]}
    assert got == planted
    assert set(planted.values()) == set(BAD_KINDS)
    assert report["valid"] == 2 * 2 * 20
    assert sum(report["rejected"].values()) == len(planted)
    assert report["dataset_version"].startswith("ds-")


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("empty.jpg", b"", "empty"),
        ("notes.jpg", b"just text, not pixels\n" * 5, "not_an_image"),
        ("cut.jpg", _jpeg(size=(200, 200))[:400], "truncated"),
        ("small.jpg", _jpeg(size=(10, 40)), "too_small"),
        ("anim.gif", None, "format_not_allowed"),
        ("bomb.png", None, "too_many_pixels"),
        ("garbage.png", None, "corrupt"),
    ],
)
def test_file_level_reasons(tmp_path, name, payload, reason):
    if name == "anim.gif":
        buf = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buf, "GIF")
        payload = buf.getvalue()
    if name == "bomb.png":
        ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
        payload = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    if name == "garbage.png":  # a valid header over data that is not a zlib stream
        ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
        payload = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"not zlib" * 4) + _chunk(b"IEND", b"")
    (tmp_path / name).write_bytes(payload)
    rows = [CatalogRow(2, str(tmp_path / name), "A", "g")]
    result = run_qa(rows, QARules(min_images_per_species=1, min_side=16), source=str(tmp_path), progress=False)
    assert [r.reason for r in result.rejected] == [reason]
    assert not result.valid


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_row_level_reasons(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg())
    twin = tmp_path / "twin.jpg"
    twin.write_bytes(_jpeg())
    other = tmp_path / "other.jpg"
    other.write_bytes(_jpeg(color=(200, 0, 0)))
    third = tmp_path / "third.jpg"
    third.write_bytes(_jpeg(color=(0, 0, 200)))
    folder = tmp_path / "dir.jpg"
    folder.mkdir()
    rows = [
        CatalogRow(2, str(good), "A", "g"),
        CatalogRow(3, str(twin), "A", "g"),  # same bytes, same label
        CatalogRow(4, str(other), "A", "g"),
        CatalogRow(5, str(other), "B", "g"),  # same bytes as line 4, other label
        CatalogRow(6, str(tmp_path / "gone.jpg"), "A", "g"),
        CatalogRow(7, str(folder), "A", "g"),
        CatalogRow(8, str(third), "A", "h"),  # A is in g elsewhere
        CatalogRow(9, str(third), "C", ""),
        CatalogRow(10, str(third), "", "g"),
    ]
    result = run_qa(rows, QARules(min_images_per_species=1), source=str(tmp_path), progress=False)
    reasons = {r.line: r.reason for r in result.rejected}
    assert reasons == {
        3: "duplicate",
        4: "conflicting_duplicate",
        5: "conflicting_duplicate",
        6: "missing",
        7: "unreadable",
        8: "group_conflict",
        9: "no_group",
        10: "unknown_label",
    }
    assert [v.line for v in result.valid] == [2]


def test_taxonomy_reasons_and_rare_class(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(_jpeg(color=(i * 40, 100, 100)))
        paths.append(str(p))
    rows = [CatalogRow(2 + i, p, "A", "") for i, p in enumerate(paths[:3])]
    rows += [CatalogRow(5, paths[3], "B", "other"), CatalogRow(6, paths[3], "Z", "")]
    tax = {"A": "g", "B": "g"}
    result = run_qa(rows, QARules(min_images_per_species=2), tax, source=str(tmp_path), progress=False)
    reasons = {r.line: r.reason for r in result.rejected}
    assert reasons == {5: "group_conflict", 6: "unknown_label"}
    result = run_qa(
        rows[:1] + rows[3:4],
        QARules(min_images_per_species=2),
        {"A": "g", "B": "other"},
        source=str(tmp_path),
        progress=False,
    )
    assert {r.reason for r in result.rejected} == {"rare_class"}
    assert any(
        "only 1 species" in w
        for w in run_qa(rows[:3], QARules(min_images_per_species=1), tax, source=str(tmp_path), progress=False).warnings
    )


def test_every_reason_code_is_exercised():
    """The reason table and the tests above stay in step."""
    tested = {
        "empty",
        "not_an_image",
        "truncated",
        "too_small",
        "format_not_allowed",
        "too_many_pixels",
        "corrupt",
        "duplicate",
        "conflicting_duplicate",
        "missing",
        "unreadable",
        "group_conflict",
        "no_group",
        "unknown_label",
        "rare_class",
        "uri_not_allowed",
    }
    assert tested == set(REASONS)


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA", "I;16", "RGB"])
def test_modes_convert_to_rgb(mode):
    arr = (np.arange(48 * 40 * 3).reshape(40, 48, 3) % 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "I;16":
        src = Image.fromarray((np.arange(48 * 40).reshape(40, 48) * 30).astype(np.uint16))
        assert src.mode in ("I;16", "I")
    elif mode == "P":
        src = img.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        src = img.convert(mode)
    out = to_rgb(src)
    assert out.mode == "RGB" and out.size == (48, 40)
    data = load_rgb(_png(src) if mode != "CMYK" else _jpeg_from(src))
    assert data.mode == "RGB"


def _jpeg_from(img):
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def test_sixteen_bit_keeps_contrast():
    src = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16).repeat(40, 0).repeat(24, 1))
    out = np.asarray(to_rgb(src))
    assert out.min() == 0 and out.max() == 255


def test_exif_orientation_applied():
    img = Image.new("RGB", (60, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert open_checked(buf.getvalue(), ImageLimits()).size == (40, 60)


def test_content_decides_format_not_suffix(tmp_path):
    p = tmp_path / "photo.gif"
    p.write_bytes(_jpeg())
    result = run_qa(
        [CatalogRow(2, str(p), "A", "g")], QARules(min_images_per_species=1), source=str(tmp_path), progress=False
    )
    assert result.valid and result.valid[0].format == "JPEG"


def test_image_folder_catalog(tmp_path):
    for group, species in [("succulents", "aloe"), ("succulents", "agave"), ("ferns", "osmunda")]:
        d = tmp_path / group / species
        d.mkdir(parents=True)
        for i in range(3):
            (d / f"{i}.jpg").write_bytes(_jpeg(color=(i * 50, len(species) * 10, 7)))
    (tmp_path / "README.txt").write_text("not an image")
    rows = list(read_catalog(str(tmp_path)))
    assert len(rows) == 9
    assert {(r.group, r.label) for r in rows} == {("succulents", "aloe"), ("succulents", "agave"), ("ferns", "osmunda")}
    result, version = qa_catalog(str(tmp_path), None, QARules(min_images_per_species=3), progress=False)
    assert len(result.valid) == 9 and version.startswith("ds-")


def test_process_pool_matches_inline(demo_catalog):
    rows = list(read_catalog(str(demo_catalog)))
    from fieldguide.data.catalog import default_taxonomy, load_taxonomy

    tax = load_taxonomy(default_taxonomy(str(demo_catalog)))
    pooled = run_qa(rows, QARules(workers=2), tax, source=str(demo_catalog), progress=False)
    inline = run_qa(rows, QARules(workers=1), tax, source=str(demo_catalog), progress=False)
    assert [(r.line, r.reason) for r in pooled.rejected] == [(r.line, r.reason) for r in inline.rejected]
    assert dataset_version_id(pooled.valid, "1") == dataset_version_id(inline.valid, "1")
    assert "<html>" in qa_html(pooled, "ds-x")


def _manifest(catalog: Path) -> Manifest:
    result, _ = qa_catalog(str(catalog), None, QARules(), progress=False)
    return Manifest.from_qa(result)


def test_version_id_stable_and_label_change_is_diffed(tmp_path, demo_catalog):
    """Acceptance: same catalog twice → same id; one changed label → another id, and `data diff` names the row."""
    a, b = _manifest(demo_catalog), _manifest(demo_catalog)
    assert a.dataset_version == b.dataset_version
    copy = tmp_path / "cat"
    shutil.copytree(demo_catalog.parent, copy)
    rows = list(csv.reader((copy / "catalog.csv").open()))
    victim = next(i for i, r in enumerate(rows) if r[1] == "Aloe vera" and "incoming" not in r[0])
    rows[victim][1] = "Echeveria elegans"
    with (copy / "catalog.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    # paths are relative to each catalog, so compare against a manifest of the copy before the change
    c = _manifest(copy / "catalog.csv")
    assert c.dataset_version != a.dataset_version
    pa, pc = tmp_path / "a.json", tmp_path / "c.json"
    pa.write_text(a.to_json())
    pc.write_text(c.to_json())
    original = Manifest.from_json(pa.read_text())
    for img in original.images:  # re-point a's rows to the copy so that uris are comparable
        img.uri = img.uri.replace(str(demo_catalog.parent.resolve()), str(copy.resolve()))
    pa.write_text(original.to_json())
    res = run_cli("data", "diff", str(pa), str(pc))
    assert res.returncode == 0, res.stderr
    changed = [line for line in res.stdout.splitlines() if line.startswith("relabelled")]
    assert len(changed) == 1 and rows[victim][0].split("/")[-1] in changed[0]
    assert "Aloe vera" in changed[0] and "Echeveria elegans" in changed[0]


def test_recreate_rebuilds_and_names_modified_file(tmp_path, demo_catalog):
    """Acceptance: recreate after one source image was modified exits non-zero and names it."""
    copy = tmp_path / "cat"
    shutil.copytree(demo_catalog.parent, copy)
    m = _manifest(copy / "catalog.csv")
    path = tmp_path / "manifest.json"
    path.write_text(m.to_json())
    ok = run_cli("data", "recreate", str(path), "--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    rebuilt = _manifest(tmp_path / "ok" / "catalog.csv")
    assert rebuilt.dataset_version == m.dataset_version  # bit for bit: same hashes, labels and groups
    victim = Path(m.images[3].uri)
    victim.write_bytes(victim.read_bytes() + b"\0")
    bad = run_cli("data", "recreate", str(path), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1
    assert f"changed: {victim}" in bad.stderr
    victim.unlink()
    gone = run_cli("data", "recreate", str(path), "--out", str(tmp_path / "gone"))
    assert gone.returncode == 1 and f"vanished: {victim}" in gone.stderr


def _paths_catalog(tmp_path: Path, uris: list[str]) -> Path:
    """A catalog folder with one good image per species (images/ok-*.jpg) plus a row per `uris` entry (label A)."""
    cat = tmp_path / "cat"
    (cat / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate(["A", "B"]):
        (cat / "images" / f"ok-{i}.jpg").write_bytes(_jpeg(color=(i * 90, 30, 30)))
        rows.append([f"images/ok-{i}.jpg", label, "g"])
    rows += [[uri, "A", "g"] for uri in uris]
    with (cat / "catalog.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["uri", "label", "group"], *rows])
    return cat / "catalog.csv"


def test_uri_outside_catalog_is_rejected_by_the_cli(tmp_path):
    """Acceptance: `http://127.0.0.1:9/x.jpg` and `/etc/passwd` rows → `uri_not_allowed`; the other rows pass."""
    catalog = _paths_catalog(tmp_path, ["http://127.0.0.1:9/x.jpg", "/etc/passwd"])
    config = tmp_path / "data.yaml"
    config.write_text("parameters:\n  rules:\n    min_images_per_species: 1\n")
    res = run_cli("data", "qa", str(catalog), "--json", "--config", str(config))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert {r["uri"]: r["reason"] for r in report["rows"]} == {
        "http://127.0.0.1:9/x.jpg": "uri_not_allowed",
        "/etc/passwd": "uri_not_allowed",
    }
    assert report["valid"] == 2 and report["rejected"] == {"uri_not_allowed": 2}


def test_uri_not_allowed_is_never_read(tmp_path):
    """Rows outside the catalog's folder are refused before any read, even when the file is a valid image."""
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(_jpeg(color=(1, 2, 3)))
    uris = [
        "../outside.jpg",  # resolved against the catalog folder: its parent
        "images/../../outside.jpg",
        "images/escape/outside.jpg",  # a symlink out of the catalog folder
        f"file://{outside}",
        "file:///etc/passwd",
        "https://example.org/x.jpg",
        "gs://bucket/x.jpg",
        "memory://x.jpg",
        "simplecache::s3://bucket/x.jpg",
        "s3://bucket/x.jpg::http://127.0.0.1:9/x.jpg",
    ]
    catalog = _paths_catalog(tmp_path, uris)
    (catalog.parent / "images" / "escape").symlink_to(tmp_path)
    result, _ = qa_catalog(str(catalog), None, QARules(min_images_per_species=1), progress=False)
    assert [r.reason for r in result.rejected] == ["uri_not_allowed"] * len(uris)
    assert sorted(v.label for v in result.valid) == ["A", "B"]
    assert "<html>" in qa_html(result, "ds-x")  # no thumbnail is read for refused rows


def test_uri_under_an_allowed_root_is_read(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "c.jpg").write_bytes(_jpeg(color=(5, 200, 5)))
    catalog = _paths_catalog(tmp_path, [str(shared / "c.jpg")])
    refused, _ = qa_catalog(str(catalog), None, QARules(min_images_per_species=1), progress=False)
    assert [r.reason for r in refused.rejected] == ["uri_not_allowed"]
    rules = from_dict(QARules, {"min_images_per_species": 1, "allowed_roots": [str(shared)]}, "rules")
    result, version = qa_catalog(str(catalog), None, rules, progress=False)
    assert not result.rejected and len(result.valid) == 3
    assert version == dataset_version_id(result.valid, rules.version)  # the roots are not part of the id


def test_uri_refusal_rules(tmp_path):
    roots = allowed_roots(str(tmp_path), ["/data/plants", "https://cdn.example.org/plants"])
    assert roots == [str(tmp_path.resolve()), "/data/plants", "https://cdn.example.org/plants"]
    allowed = [
        "s3://any-bucket/x.jpg",
        str(tmp_path / "a" / "b.jpg"),
        f"file://{tmp_path}/a.jpg",
        "/data/plants/x/y.jpg",
        "https://cdn.example.org/plants/a.jpg",
        "https://cdn.example.org/plants/a.jpg?sig=1",
    ]
    assert [u for u in allowed if uri_refusal(u, roots)] == []
    refused = [
        "/data/plants-old/x.jpg",
        "/data/plants/../secret.jpg",
        "relative.jpg",
        "data:image/png;base64,AAAA",
        "https://cdn.example.org/plantsx/a.jpg",
        "https://cdn.example.org/plants/../a.jpg",
        "https://cdn.example.org/plants/%2e%2e/a.jpg",
        "https://cdn.example.org/plants/..%2fa.jpg",
        "https://cdn.example.org.evil.net/plants/a.jpg",
        "https://cdn.example.org@evil.net/plants/a.jpg",
        "https://evil.net/x?/../../cdn.example.org/plants/a.jpg",
        "http://cdn.example.org/plants/a.jpg",
        "s3a://bucket/x.jpg",
        "/tmp/x\0.jpg",
    ]
    assert [u for u in refused if not uri_refusal(u, roots)] == []
    assert uri_refusal(str(tmp_path / "a.jpg"), allowed_roots("", []))  # rows without a catalog: no folder
    with pytest.raises(ConfigError, match="allowed_roots"):
        from_dict(QARules, {"allowed_roots": ["relative/dir"]}, "rules")


def _escaping_manifest(tmp_path: Path, **bad: str) -> Path:
    """A manifest of two real images whose second row has the fields in `bad` (label, group or format)."""
    images = []
    for i in range(2):
        src = tmp_path / "src" / f"{i}.jpg"
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(_jpeg(color=(i * 100, 0, 0)))
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        fields = {"label": "A", "group": "g", "format": "JPEG"} | (bad if i == 1 else {})
        images.append(ValidImage(str(src), sha, fields["label"], fields["group"], 48, 40, fields["format"], 1, i + 2))
    path = tmp_path / "manifest.json"
    path.write_text(Manifest.build(images, "1", str(tmp_path / "src"), 0).to_json())
    return path


def test_recreate_refuses_a_label_that_leaves_out(tmp_path):
    """Acceptance: a manifest row labelled `../../escaped` → `data recreate` exits 2 and writes nothing."""
    manifest = _escaping_manifest(tmp_path, label="../../escaped")
    out = tmp_path / "nested" / "out"
    res = run_cli("data", "recreate", str(manifest), "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert "'../../escaped'" in res.stderr and "outside the output folder" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "nested").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "src"]


@pytest.mark.parametrize(
    "bad",
    [
        {"label": "../../escaped"},
        {"label": ".."},
        {"label": ""},
        {"label": "a/b"},
        {"group": "/etc"},
        {"group": "..\\x"},
        {"format": "/../../../x"},
        {"label": "nul\0"},
    ],
)
def test_recreate_destination_must_stay_inside_out(tmp_path, bad):
    manifest = Manifest.load(str(_escaping_manifest(tmp_path, **bad)))
    out = tmp_path / "out"
    ok, escaping = (m for m in sorted(manifest.images, key=lambda i: i.line))
    assert destination(ok, out).as_posix() == f"g/A/{ok.sha256}.jpg"
    with pytest.raises(FieldguideError, match="outside the output folder"):
        destination(escaping, out)
    with pytest.raises(FieldguideError):
        recreate(manifest, out)
    assert not out.exists()


def test_recreate_refuses_a_symlink_out_of_out(tmp_path):
    manifest = Manifest.load(str(_escaping_manifest(tmp_path)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "g").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(FieldguideError, match="outside the output folder"):
        recreate(manifest, out)
    assert not (tmp_path / "elsewhere").exists() and [p.name for p in out.iterdir()] == ["g"]
