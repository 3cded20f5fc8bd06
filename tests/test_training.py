"""Training: export without pickle, tuning fan-out/fan-in, MLflow curves, and resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time

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


@pytest.fixture(scope="module")
def s3_stack():
    """A stack whose artifact store is S3 on moto's server (the SageMaker stack's kind of store), with the local
    orchestrator: registered in the session's store, used by a subprocess through ZENML_ACTIVE_STACK_ID only."""

    from tests.conftest import moto_client, moto_server

    with moto_server() as url:
        s3 = moto_client("s3", url)
        s3.create_bucket(Bucket="fieldguide-ckpt")
        yield s3_test_stack(url), s3


def s3_test_stack(url: str) -> dict[str, str]:
    """Register the S3 test stack; the environment that makes a subprocess use it (and reach moto)."""
    from zenml.client import Client

    from stacks import register_stack
    from tests.conftest import moto_env

    spec = {
        "name": "fieldguide-s3-test",
        "components": {
            "orchestrator": {"name": "fieldguide-orchestrator", "flavor": "local"},
            "artifact_store": {
                "name": "fieldguide-moto-s3",
                "flavor": "s3",
                "configuration": {"path": "s3://fieldguide-ckpt/artifacts", "client_kwargs": {"endpoint_url": url}},
            },
            "data_validator": {"name": "fieldguide-evidently", "flavor": "evidently"},
        },
    }
    stack_id = str(Client().get_stack(register_stack(spec)).id)
    aws = moto_env(url)
    return {**aws, "ZENML_ACTIVE_STACK_ID": stack_id}


def _checkpoints(s3) -> list[str]:
    listing = s3.list_objects_v2(Bucket="fieldguide-ckpt", Prefix="artifacts/checkpoints/child-succulents-")
    return [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("/last.pt")]


@pytest.mark.slow
def test_sigkill_during_training_on_an_s3_store_then_rerun_resumes(child_run, s3_stack, tmp_path):
    """Acceptance: kill -9 during full training on a remote artifact store; the same command resumes from the
    checkpoint it left in the store (on SageMaker, a new job finds it there)."""
    env, s3 = s3_stack
    config = tmp_path / "child_resume.yaml"
    text = CHILD_TINY.read_text().replace("epochs: 3", "epochs: 6")
    config.write_text(text.replace("experiment_tracker: fieldguide-mlflow", 'experiment_tracker: ""'))
    cmd = [sys.executable, str(ROOT / "run.py"), "--pipeline", "child", "--group", "succulents"]
    cmd += ["--config", str(config)]
    log = tmp_path / "killed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}
        )
        deadline = time.time() + 300
        ckpt = None
        while time.time() < deadline and proc.poll() is None:
            found = _checkpoints(s3)
            if found:
                ckpt = found[0]
                break
            time.sleep(0.2)
        assert ckpt is not None, "no checkpoint appeared in the S3 store during training: " + log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _checkpoints(s3) == [ckpt]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert f"Resuming from checkpoint s3://fieldguide-ckpt/{ckpt}" in out
    assert "completed" in out
    assert _checkpoints(s3) == []  # removed once the model artifact is stored
    models = s3.list_objects_v2(Bucket="fieldguide-ckpt", Prefix="artifacts/")["KeyCount"]
    assert models > 0  # the run's artifacts went to the S3 store


@pytest.mark.slow
def test_unknown_group_lists_known_groups_exit_2(shard_set_id):
    from tests.conftest import run_cli

    res = run_cli("--pipeline", "child", "--group", "cacti")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: unknown group 'cacti'; known groups: ferns, flowers, succulents"
