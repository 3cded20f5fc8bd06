"""One preprocessing path: the HTTP front's (Pillow + numpy, no torch) is evaluation's and timm's eval transform."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldguide.serve.release import RELEASE_FILE, Release
from tests.conftest import ROOT

GROUPS = {"ferns": ["f1", "f2"], "succulents": ["s1", "s2", "s3"]}


def data_config(**overrides) -> dict:
    """timm's data config of the demo's architecture at the demo's size (what `make run` trains and serves)."""
    from fieldguide.train.models import create_model, data_config_for

    return {**data_config_for(create_model("mobilenetv3_small_050", 3), 64), **overrides}


def release_folder(folder: Path, config: dict) -> Path:
    """A release folder as the HTTP front reads it: release.json and each model's model.json (no weights needed)."""
    from fieldguide.keys import MODEL_META

    release = Release("r1", {}, {}, list(GROUPS), "now")
    folder.mkdir(parents=True)
    (folder / RELEASE_FILE).write_text(json.dumps(asdict(release)))
    models = {"router": list(GROUPS)} | {f"child-{g}": species for g, species in GROUPS.items()}
    for name, classes in models.items():
        (folder / name).mkdir()
        (folder / name / MODEL_META).write_text(json.dumps({"classes": classes, "data_config": config}))
    return folder


def uploads(demo_catalog: Path) -> list[bytes]:
    """Demo catalog JPEGs as stored, and some of them as a phone would send them (larger, other aspect, PNG)."""
    files = sorted((demo_catalog.parent / "images").rglob("*.jpg"))[::9][:16]
    out = [f.read_bytes() for f in files]
    for i, f in enumerate(files[:6]):
        img = Image.open(f).convert("RGB").resize([(300, 200), (97, 130), (64, 250)][i % 3], Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG" if i % 2 else "JPEG", quality=90)
        out.append(buf.getvalue())
    assert len(out) == 22, len(out)
    return out


@pytest.mark.parametrize("overrides", [{}, {"crop_mode": "squash", "interpolation": "bilinear"}])
def test_front_preprocessing_is_evaluations_and_timms(demo_catalog, tmp_path, overrides):
    from timm.data import create_transform

    from fieldguide.data.images import load_rgb
    from fieldguide.serve.front import ReleaseView
    from fieldguide.train.models import eval_transform

    config = data_config(**overrides)
    front = ReleaseView(release_folder(tmp_path / "release", config))
    evaluation = eval_transform(config)  # evaluation's, and training's validation transform
    timm_eval = create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    for data in uploads(demo_catalog):
        served = front.decode(data)  # what the front sends the model service
        img = load_rgb(data)  # how evaluation's data loader decodes a shard's image
        assert served.dtype == np.float32 and served.shape == (3, 64, 64)
        np.testing.assert_allclose(served, evaluation(img).numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(served, timm_eval(img).numpy(), rtol=0, atol=1e-6)


def test_a_crop_mode_the_transform_does_not_reproduce_is_refused():
    from fieldguide.data.images import EvalTransform

    with pytest.raises(ValueError, match="crop_mode 'border'"):
        EvalTransform.of(data_config(crop_mode="border"))


def test_the_front_answers_and_records_without_importing_torch(demo_catalog, tmp_path):
    """Everything the HTTP front does with an upload, in a fresh interpreter: decode, answer, log entry."""
    folder = release_folder(tmp_path / "release", data_config())
    jpeg = sorted((demo_catalog.parent / "images").rglob("*.jpg"))[0]
    script = f"""
import sys
import numpy as np
from pathlib import Path
from fieldguide.monitor.capture import Capture, log_entry, photo_extension
from fieldguide.monitor.config import CaptureConfig
from fieldguide.monitor.traffic import release_taxonomy
from fieldguide.serve.edge import UploadEdge
from fieldguide.serve.front import BadRequest, ReleaseView
from fieldguide.serve.gateway import Gateway
view = ReleaseView(Path({str(folder)!r}))
data = Path({str(jpeg)!r}).read_bytes()
x = view.decode(data)
row = np.full(len(view.groups) + len(view.species), 0.2, np.float32)
answer = {{**view.describe(row, 1.0), "request_id": "r"}}
entry = log_entry(view, {{"store_size": 96, "jpeg_quality": 90}}, answer, row, view.open(data), data)
assert release_taxonomy(Path({str(folder)!r})) == view.taxonomy()
assert entry["species"] and photo_extension(data) == "jpg" and x.shape == (3, 64, 64)
print("torch imported:", "torch" in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torch imported: False" in res.stdout
