"""Training: export without pickle, tuning fan-out/fan-in, MLflow curves, and resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fieldguide.train.models import ModelBundle, ModelMeta, create_model, load_bundle, save_bundle
from fieldguide.train.tuning import TrialResult, TuneConfig, TuningSummary, sample_trials
from tests.conftest import CHILD_TINY, ROOT


def test_exported_weights_reload_with_safetensors_and_same_logits(tmp_path):
    torch.manual_seed(0)
    model = create_model("mobilenetv3_small_050", 3).eval()
    meta = ModelMeta("child-x", "mobilenetv3_small_050", 3, ["a", "b", "c"], {"input_size": [3, 32, 32]}, "ds-1")
    save_bundle(ModelBundle(model, meta), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "model.json"}
    assert not (tmp_path / "model.safetensors").read_bytes().startswith(b"\x80")  # not a pickle stream
    loaded = load_bundle(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert loaded.meta == meta


def test_trials_are_sampled_up_front_and_deterministic():
    cfg = TuneConfig(trials=5, seed=7)
    a, b = sample_trials(cfg), sample_trials(cfg)
    assert a == b and len(a) == 5
    assert all(cfg.space.lr[0] <= t["lr"] <= cfg.space.lr[1] for t in a)
    assert sample_trials(TuneConfig(trials=5, seed=8)) != a


def test_best_trial_selection():
    trials = [
        TrialResult(0, {"lr": 1}, 0.5, 1.0, 1),
        TrialResult(1, {"lr": 2}, 0.7, 0.9, 1),
        TrialResult(2, {"lr": 3}, 0.7, 0.8, 1),
    ]
    assert TuningSummary.of(trials).best_index == 2


@pytest.mark.slow
def test_n_trials_are_n_steps_and_train_uses_the_best(child_run):
    steps = child_run.steps
    trials = sorted(name for name in steps if name.startswith("tune_trial_"))
    assert trials == ["tune_trial_0", "tune_trial_1"]
    summary = steps["select_best"].outputs["tuning_summary"][0].load()
    best = steps["select_best"].outputs["best_params"][0].load()
    assert best == summary.best.params
    assert summary.best.val_acc == max(t.val_acc for t in summary.trials)
    history = steps["train_model"].outputs["training_history"][0].load()
    for key, value in best.items():
        assert history.params[key] == value
    model = steps["train_model"].outputs["model"][0]
    assert child_run.model_version.model.name == "child-succulents"
    assert child_run.model_version.get_model_artifact("model").id == model.id
    bundle = model.load()
    assert bundle.meta.classes == ["Aloe vera", "Echeveria elegans", "Haworthia fasciata"]
    assert bundle.meta.params["lr"] == best["lr"]


@pytest.mark.slow
def test_mlflow_has_per_epoch_curves(child_run):
    import mlflow

    from stacks import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("fieldguide_child")
    assert exp is not None
    # The MLflow run of this pipeline run (other tests train other succulents children).
    run_id = child_run.steps["train_model"].run_metadata["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.experiment_id == exp.experiment_id and run.data.params["model"] == "child-succulents"
    history = client.get_metric_history(run_id, "val_acc")
    assert [m.step for m in history] == [0, 1, 2]
    assert client.get_metric_history(run_id, "images_per_s")
    assert run.data.params["dataset_version"].startswith("ds-")


def _checkpoints(home: Path) -> list[Path]:
    return list(home.glob("zenml/local_stores/*/checkpoints/child-succulents-*/last.pt"))


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_resumes(child_run, home, tmp_path):
    """Acceptance: kill -9 during full training; the same command resumes from the last checkpoint."""
    config = tmp_path / "child_resume.yaml"
    config.write_text(CHILD_TINY.read_text().replace("epochs: 3", "epochs: 6"))
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        "--pipeline",
        "child",
        "--group",
        "succulents",
        "--config",
        str(config),
    ]
    before = set(_checkpoints(home))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        fresh = [p for p in _checkpoints(home) if p not in before]
        if fresh:
            ckpt = fresh[0]
            break
        time.sleep(0.2)
    assert ckpt is not None, "no checkpoint appeared during training"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Resuming from checkpoint" in out
    assert "completed" in out
    assert not ckpt.exists()  # removed once the model artifact is stored


@pytest.mark.slow
def test_unknown_group_lists_known_groups_exit_2(shard_set_id):
    from tests.conftest import run_cli

    res = run_cli("--pipeline", "child", "--group", "cacti")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: unknown group 'cacti'; known groups: ferns, flowers, succulents"
