"""fieldguide.serve.predictor without a server: release folders, two-stage answers, LRU children, request validation."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fieldguide.serve.front import BadRequest
from fieldguide.serve.predictor import TwoStagePredictor, write_release
from fieldguide.serve.release import Release, ServingConfig
from fieldguide.serve.staging import png_header
from fieldguide.train.models import ModelBundle, ModelMeta, create_model

DATA_CONFIG = {
    "input_size": [3, 32, 32],
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "crop_pct": 1.0,
    "crop_mode": "center",
}
GROUPS = {"ferns": ["f1", "f2"], "flowers": ["p1", "p2", "p3"], "grasses": ["g1", "g2"]}


def bundle(name: str, classes: list[str], group: str = "") -> ModelBundle:
    torch.manual_seed(len(name))
    model = create_model("mobilenetv3_small_050", len(classes)).eval()
    meta = ModelMeta(name, "mobilenetv3_small_050", len(classes), classes, DATA_CONFIG, "ds-1", group=group)
    return ModelBundle(model, meta)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    def make(**serving) -> TwoStagePredictor:
        folder = tmp_path_factory.mktemp("release")
        bundles = {"router": bundle("router", list(GROUPS))}
        bundles |= {f"child-{g}": bundle(f"child-{g}", s, g) for g, s in GROUPS.items()}
        versions = {name: "v1" for name in bundles}
        release = Release("r1", versions, {}, list(GROUPS), "now", serving=ServingConfig(**serving))
        write_release(release, bundles, folder)
        return TwoStagePredictor(folder)

    return make


def jpeg(size=(40, 30), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 160, 60)).save(buf, format=fmt)
    return buf.getvalue()


def test_two_stage_answer_shape_and_probabilities(release_dir):
    predictor = release_dir(top_k=3, route_k=3)
    answer = predictor.classify(jpeg())
    assert [s["name"] for s in answer["species"]] and len(answer["species"]) == 3
    assert answer["group"]["name"] in GROUPS and answer["release"] == "r1"
    assert set(answer["versions"]) == {"router", "child-ferns", "child-flowers", "child-grasses"}
    rows = predictor.forward(predictor.decode(jpeg())[None])
    # With every group kept, the species probabilities form a distribution.
    np.testing.assert_allclose(rows[0, len(GROUPS) :].sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("route_k", [1, 2])
def test_children_run_only_on_routed_rows_and_answer_as_every_child_on_every_row(release_dir, route_k):
    """Issue 20: the routed forward equals the two-stage formula with every child run on the whole batch."""
    from fieldguide.evaluate.metrics import forward_with_embedding
    from fieldguide.evaluate.two_stage import combine

    predictor = release_dir(route_k=route_k)
    rng = np.random.default_rng(0)
    x = np.stack(
        [predictor.preprocess(Image.fromarray(rng.integers(0, 256, (40, 30, 3), np.uint8))) for _ in range(24)]
    )
    out = predictor.parts(x)
    with torch.inference_mode():
        logits, _ = forward_with_embedding(predictor.router.model, torch.from_numpy(x))
        p_group = logits.softmax(1).numpy()
        every = {
            g: forward_with_embedding(predictor._child(name).model, torch.from_numpy(x))
            for g, name in enumerate(predictor.groups)
        }
    p_child = {g: logits.softmax(1).numpy() for g, (logits, _) in every.items()}
    expected = combine(p_group, p_child, predictor.species_of, len(predictor.species), route_k)
    assert len(set(p_group.argmax(1))) > 1  # the batch really mixes groups
    np.testing.assert_allclose(out.p_species, expected, rtol=0, atol=1e-5)
    for i, g in enumerate(p_group.argmax(1)):  # the logged embedding is the top-1 group child's
        np.testing.assert_allclose(out.child_pre[i], every[int(g)][1][i].numpy(), rtol=0, atol=1e-4)


def test_children_lazy_loaded_under_an_lru_cap(release_dir):
    predictor = release_dir(route_k=1, max_children_in_memory=1)
    assert predictor.loaded_children() == []
    for _ in range(3):
        predictor.classify(jpeg())
    assert len(predictor.loaded_children()) == 1
    predictor._child("ferns")
    predictor._child("grasses")
    assert predictor.loaded_children() == ["grasses"]


@pytest.mark.parametrize(
    ("data", "reason", "status"),
    [
        (b"", "empty", 400),
        (b"definitely not an image", "not_an_image", 400),
        (jpeg()[:200], "truncated", 400),
        (jpeg(fmt="GIF"), "format_not_allowed", 415),
        (png_header(100_000, 100_000), "too_many_pixels", 413),
        (b"\xff" * 5000, "too_large", 413),
    ],
)
def test_bad_uploads_are_refused_with_a_reason(release_dir, data, reason, status):
    predictor = release_dir(max_bytes=4000)
    with pytest.raises(BadRequest) as info:
        predictor.decode(data)
    assert info.value.reason == reason and info.value.status == status
    assert info.value.body()["reason"] == reason and info.value.body()["error"]
