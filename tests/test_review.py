"""The review queue, labels, the catalog commit and the retrain policy, without servers or pipelines (issue 16).

The whole loop on a served release, through Label Studio, is tests/test_monitor.py's last test.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml
from PIL import Image

from fieldguide.errors import FieldguideError
from fieldguide.keys import ModelKey
from fieldguide.monitor.capture import Capture
from fieldguide.monitor.config import CaptureConfig
from fieldguide.review.commit import add_photos, append_rows, extend_taxonomy, local_csv
from fieldguide.review.config import RetrainConfig
from fieldguide.review.labelstudio import _older, annotation_request, label_config
from fieldguide.review.policy import decide
from fieldguide.review.queue import (
    Label,
    LabelRequest,
    ReviewStore,
    build_queue,
    find_entry,
    make_label,
    record_label,
)

TAXONOMY = {"succulents": ["Aloe vera", "Echeveria elegans"], "ferns": ["Polypodium vulgare", "Athyrium filix-femina"]}
SPECIES_GROUP = {s: g for g, names in TAXONOMY.items() for s in names}


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def answer(i: int, p: float, seed: int | None = None) -> dict:
    """The logged answer to request req-i (a photo of seed `seed`, else i): Aloe vera, from child-succulents."""
    import hashlib

    sha = hashlib.sha256(photo(i if seed is None else seed)).hexdigest()
    entry = {"request_id": f"req-{i}", "release": "r1", "image_sha256": sha}
    group, species = "succulents", "Aloe vera"
    return entry | {"group": group, "child_model": f"child-{group}", "species": species, "species_probability": p}


@pytest.fixture
def monitor(tmp_path):
    """A production monitoring folder: an audit photo, two uncertain ones, one flagged by feedback, one not kept."""
    cfg = CaptureConfig(low_confidence=0.4, audit_fraction=0.0)
    capture = Capture(tmp_path / "production", "r1-1", cfg, lambda release: SPECIES_GROUP)
    for i, p in enumerate((0.35, 0.9, 0.2, 0.95)):
        capture.record(answer(i, p), photo(i), "jpg")
    capture.samples.keep(answer(4, 0.9)["image_sha256"], photo(4), {**answer(4, 0.9), "reason": "audit"})
    capture.record(answer(5, 0.3, seed=0), photo(0), "jpg")  # the same photo as req-0, asked again
    capture.feedback(b'{"request_id": "req-1", "species": "Echeveria elegans"}')
    return tmp_path / "production"


def test_queue_puts_feedback_first_then_the_least_confident_then_the_audit_sample(monitor, tmp_path):
    queue = build_queue(monitor, ReviewStore(tmp_path / "review"))
    assert [(e.request_id, e.reason) for e in queue] == [
        ("req-1", "feedback"),
        ("req-2", "low_confidence"),
        ("req-5", "low_confidence"),  # one entry for the photo of req-0 and req-5, shown by its least confident
        ("req-4", "audit"),
    ]
    assert queue[0].feedback == "Echeveria elegans" and queue[2].requests == ["req-0", "req-5"]
    assert all(e.photo.is_file() and e.child_model == "child-succulents" for e in queue)


def test_labels_are_checked_against_the_answering_release_and_recorded(monitor, tmp_path):
    store = ReviewStore(tmp_path / "review")

    def label(**kw):
        return record_label(store, monitor, LabelRequest(**kw), lambda release: TAXONOMY)

    first, replaced = label(request_id="req-0", by="ann", species="Echeveria elegans")
    assert (first.species, first.group, first.answered_group, replaced) == (
        "Echeveria elegans",
        "succulents",
        "succulents",
        None,
    )
    second, replaced = label(request_id="req-5", by="bob", group="ferns", species="Polypodium vulgare")
    assert second.rerouted and replaced == first  # the router sent a fern to succulents
    new, _ = label(request_id="req-2", by="ann", new_species="Haworthia fasciata", group="succulents")
    assert new.new_species
    again, _ = label(request_id="req-4", by="ann", species="Haworthia fasciata")  # known once a reviewer added it
    assert again.new_species and again.group == "succulents"
    before = store.labels_file.read_bytes()
    for kw, said in (
        ({"request_id": "req-3", "by": "ann", "species": "Aloe vera"}, "not in the review queue"),
        ({"request_id": "nope", "by": "ann", "species": "Aloe vera"}, "unknown request id"),
        ({"request_id": "req-1", "by": "ann", "species": "Rosa canina"}, "not a species of release r1"),
        ({"request_id": "req-1", "by": "ann", "species": "Aloe vera", "group": "ferns"}, "belongs to 'succulents'"),
        ({"request_id": "req-1", "by": "ann", "new_species": "Aloe vera", "group": "succulents"}, "already a species"),
        ({"request_id": "req-1", "by": "ann", "new_species": "X y", "group": "mosses"}, "unknown group"),
        ({"request_id": "req-1", "by": "ann", "new_species": "a/b", "group": "ferns"}, "not a plain name"),
        ({"request_id": "req-1", "by": " ", "species": "Aloe vera"}, "--by NAME"),
    ):
        with pytest.raises(FieldguideError, match=said):
            label(**kw)
    assert store.labels_file.read_bytes() == before  # a refused label changes nothing


def test_committed_photos_keep_their_label(monitor, tmp_path):
    store = ReviewStore(tmp_path / "review")
    label, _ = record_label(store, monitor, LabelRequest("req-2", "ann", "Aloe vera"), lambda release: TAXONOMY)
    from dataclasses import replace

    store.append([replace(label, dataset_version="ds-1", committed_at=datetime.now(UTC).isoformat())])
    entry = find_entry(build_queue(monitor, store), "req-2", monitor)
    with pytest.raises(FieldguideError, match="already committed .* into dataset ds-1"):
        make_label(LabelRequest("req-2", "bob", "Echeveria elegans"), entry, TAXONOMY, {}, "cli")


def test_commit_adds_content_addressed_photos_and_provenance_rows(monitor, tmp_path):
    catalog = tmp_path / "cat" / "catalog.csv"
    catalog.parent.mkdir()
    catalog.write_text('uri,label\nimg/a.jpg,Aloe vera\n"img/b, c.jpg",Echeveria elegans\n')
    store = ReviewStore(tmp_path / "review")
    label, _ = record_label(store, monitor, LabelRequest("req-2", "ann", "Aloe vera"), lambda release: TAXONOMY)
    queue = {e.sha256: e.photo for e in build_queue(monitor, store)}
    addition = add_photos(catalog, [label], queue.get)
    append_rows(catalog, addition.rows)
    rows = list(csv.DictReader(catalog.open()))
    assert rows[:2] == [
        {"uri": "img/a.jpg", "label": "Aloe vera", "group": "", "source": "", "labeller": ""},
        {"uri": "img/b, c.jpg", "label": "Echeveria elegans", "group": "", "source": "", "labeller": ""},
    ]
    assert rows[2]["source"] == "review" and rows[2]["labeller"] == "ann" and rows[2]["group"] == "succulents"
    import hashlib

    copied = catalog.parent / rows[2]["uri"]
    assert copied.stem == hashlib.sha256(copied.read_bytes()).hexdigest()  # named by its own content
    assert add_photos(catalog, [label], queue.get).present == [label]  # a second commit does not add it twice
    # Relabelled after an interrupted commit: the row is replaced, not added again.
    from dataclasses import replace

    relabelled = replace(label, species="Echeveria elegans", by="bob")
    append_rows(catalog, add_photos(catalog, [relabelled], queue.get).rows)
    rows = list(csv.DictReader(catalog.open()))
    assert len(rows) == 3 and (rows[2]["label"], rows[2]["labeller"]) == ("Echeveria elegans", "bob")
    # The sample store may delete a labelled photo; its pinned copy is what the commit reads.
    assert store.photo(label.sha256) is not None
    queue[label.sha256].unlink()
    assert add_photos(catalog, [label], lambda sha: store.photo(sha) or queue[sha]).labels == [label]
    with pytest.raises(FieldguideError, match="local CSV catalog"):
        local_csv(str(catalog.parent))
    taxonomy = tmp_path / "cat" / "taxonomy.yaml"
    taxonomy.write_text(yaml.safe_dump({"groups": TAXONOMY}, sort_keys=False))
    assert extend_taxonomy(taxonomy, {"Haworthia fasciata": "succulents"}) == ["Haworthia fasciata"]
    assert extend_taxonomy(taxonomy, {"Haworthia fasciata": "succulents"}) == []
    assert yaml.safe_load(taxonomy.read_text())["groups"]["succulents"][-1] == "Haworthia fasciata"


def committed(n: int, group: str, answered: str = "", at: datetime | None = None) -> list[Label]:
    stamp = (at or datetime.now(UTC)).isoformat()
    return [
        Label(
            f"{i:064x}", f"r{i}", "x", group, "ann", "cli", stamp, answered_group=answered or group, committed_at=stamp
        )
        for i in range(n)
    ]


def test_retrain_policy_needs_a_signal_enough_labels_and_the_cooldown():
    now = datetime.now(UTC)
    cfg = RetrainConfig(min_labels=20, cooldown_h=24, require_signal=True)
    flagged = {"verdict": "retrain_recommended", "window": "w"}
    labels = committed(25, "succulents") + committed(30, "ferns", answered="succulents")
    old = now - timedelta(days=2)
    child = decide(ModelKey.child("succulents"), labels, flagged, old, cfg, now)
    assert child.retrain and child.labels == 25, child.line()
    assert decide(ModelKey.router(), labels, flagged, old, cfg, now).labels == 30  # photos moved between groups
    assert not decide(ModelKey.child("succulents"), labels, {"verdict": "watch"}, old, cfg, now).retrain
    fell = {"verdict": "ok", "feedback": {"accuracy": 0.5, "answers": 30, "reference": 0.8}}
    assert decide(ModelKey.child("succulents"), labels, fell, old, cfg, now).retrain
    handful = {"verdict": "ok", "feedback": {"accuracy": 0.0, "answers": 3, "reference": 0.8}}
    assert not decide(ModelKey.child("succulents"), labels, handful, old, cfg, now, min_feedback=20).retrain
    few = decide(ModelKey.child("succulents"), labels[:5], flagged, old, cfg, now)
    assert not few.retrain and "needs 20" in few.line()
    fresh = decide(ModelKey.child("succulents"), labels, flagged, now - timedelta(hours=1), cfg, now)
    assert not fresh.retrain and "cooling down" in fresh.line()
    later = decide(ModelKey.child("succulents"), labels, flagged, now + timedelta(seconds=1), cfg, now)
    assert later.labels == 0  # labels committed before the newest version were already in its data
    assert not decide(ModelKey.child("flowers"), labels, flagged, old, cfg, now).retrain


def test_label_studio_config_and_annotations_map_to_labels():
    config = label_config({"succulents": ["Aloe vera", 'Odd "name"'], "ferns": ["Polypodium vulgare"]})
    assert '<Choice value="Aloe vera"/>' in config and "<Choice value='Odd \"name\"'/>" in config
    task = {"id": 1, "data": {"request_id": "req-1"}}
    species = {"from_name": "species", "type": "choices", "value": {"choices": ["Aloe vera"]}}
    new = {"from_name": "new_species", "type": "textarea", "value": {"text": [" Haworthia fasciata "]}}
    group = {"from_name": "group", "type": "choices", "value": {"choices": ["succulents"]}}
    assert annotation_request(task, {"result": [species]}, "a@x").species == "Aloe vera"
    req = annotation_request(task, {"result": [new, group]}, "a@x")
    assert (req.new_species, req.group, req.by) == ("Haworthia fasciata", "succulents", "a@x")
    assert annotation_request(task, {"result": [], "was_cancelled": True}, "a@x") is None
    assert annotation_request({"id": 2, "data": {}}, {"result": [species]}, "a@x") is None  # not one of ours
    # A pull records an annotation only when it changed after the photo's current label.
    assert _older("2026-11-29T18:46:51.983210Z", "2026-11-29T18:47:00+00:00")
    assert not _older("2026-11-29T18:48:00Z", "2026-11-29T18:47:00+00:00")


def test_a_held_review_lock_is_one_clear_error(tmp_path, monkeypatch):
    from filelock import FileLock

    store = ReviewStore(tmp_path / "review")
    store.folder.mkdir()
    monkeypatch.setattr("fieldguide.review.queue.LOCK_TIMEOUT_S", 0.2)
    held = FileLock(str(store.folder / "review.lock"))
    with held, pytest.raises(FieldguideError, match="holds the review lock"), store.locked():
        pass
