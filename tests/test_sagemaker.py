"""The SageMaker stack and overlays, validated offline against the installed ZenML flavors and settings."""

import socket
from pathlib import Path

import pytest
import yaml

from fieldguide.errors import ConfigError
from pipelines.data import STEPS as DATA_STEPS
from pipelines.monitor import step_ids as monitor_steps
from pipelines.training import step_ids
from stacks import expand_env, load_stack_spec, validate_stack_spec
from stacks.overlays import expand_steps, load_overlay
from tests.conftest import ROOT

AWS_ENV = {
    "FIELDGUIDE_SAGEMAKER_ROLE_ARN": "arn:aws:iam::123456789012:role/fieldguide-sagemaker",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "FIELDGUIDE_S3_BUCKET": "fieldguide-test",
    "FIELDGUIDE_ECR_REGISTRY": "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    "FIELDGUIDE_CODEBUILD_PROJECT": "fieldguide-images",
    "MLFLOW_TRACKING_URI": "https://mlflow.example.org",
}
OVERLAYS = sorted((ROOT / "configs").glob("*_sagemaker.yaml"))


def steps_of(overlay: Path) -> list[str]:
    from pipelines.runner import RELEASE_STEPS

    if overlay.name.startswith("monitor"):
        return monitor_steps(["router", "child-ferns", "child-succulents"])
    if overlay.name.startswith("release"):
        return RELEASE_STEPS
    if overlay.name.startswith("deploy"):
        return []  # the deploy overlay holds parameters only (the rollout runs on this machine)
    return DATA_STEPS if overlay.name.startswith("data") else step_ids(5)


def test_stack_yamls_validate_against_installed_flavors():
    validate_stack_spec(load_stack_spec(ROOT / "stacks/local.yaml"))
    spec = expand_env(load_stack_spec(ROOT / "stacks/sagemaker.yaml"), AWS_ENV)
    validate_stack_spec(spec)
    assert spec["components"]["artifact_store"]["configuration"]["path"] == "s3://fieldguide-test/fieldguide/artifacts"


def test_stack_needs_every_account_value_from_the_environment():
    with pytest.raises(ConfigError, match="FIELDGUIDE_S3_BUCKET") as info:
        expand_env(load_stack_spec(ROOT / "stacks/sagemaker.yaml"), {k: v for k, v in AWS_ENV.items() if "S3" not in k})
    assert "AWS_DEFAULT_REGION" not in str(info.value)


def test_misspelt_stack_setting_fails(tmp_path):
    spec = expand_env(load_stack_spec(ROOT / "stacks/sagemaker.yaml"), AWS_ENV)
    spec["components"]["orchestrator"]["configuration"]["execution_rol"] = "x"
    with pytest.raises(ConfigError, match="unknown setting 'execution_rol'"):
        validate_stack_spec(spec)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_validates(overlay):
    steps = steps_of(overlay)
    data = expand_steps(load_overlay(overlay, steps), steps)
    assert set(data.get("steps", {})) <= set(steps)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["settings"]["orchestrator.sagemaker"].update(instance_typ="ml.m5.xlarge"), "instance_typ"),
        (lambda d: d["settings"]["docker"].update(parent_imag="x"), "parent_imag"),
        (lambda d: d["settings"].update({"orchestrator.sagemakr": {}}), "orchestrator.sagemakr"),
        (lambda d: d["steps"].update({"train_modl": {"settings": {}}}), "train_modl"),
        (lambda d: d["settings"]["orchestrator.sagemaker"].update(volume_size_in_gb="big"), "volume_size_in_gb"),
    ],
)
def test_misspelt_overlay_setting_fails(tmp_path, mutate, message):
    data = yaml.safe_load((ROOT / "configs/parent_sagemaker.yaml").read_text())
    mutate(data)
    path = tmp_path / "parent_sagemaker.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_overlay(path, step_ids(3))


def test_dry_run_prints_instance_types_and_images_without_network(monkeypatch):
    from pipelines.runner import dry_run

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("FIELDGUIDE_ECR_REGISTRY", AWS_ENV["FIELDGUIDE_ECR_REGISTRY"])
    lines = dry_run(ROOT, "child", "succulents", None)
    text = "\n".join(lines)
    assert "fieldguide_child --group succulents" in text
    assert "tune_trial_0" in text and "ml.g5.xlarge" in text and "training job" in text
    assert "report_drift" in text and "ml.m5.xlarge" in text
    assert f"{AWS_ENV['FIELDGUIDE_ECR_REGISTRY']}/zenml:fieldguide_child-orchestrator" in text


def test_monitor_runs_on_a_schedule_on_sagemaker(tmp_path):
    """The monitor overlay's schedule is a valid ZenML Schedule, shown by the dry run; a bad one fails offline."""
    from pipelines.runner import dry_run

    text = "\n".join(dry_run(ROOT, "monitor", None, None))
    assert "fieldguide_monitor" in text and "assess_router" in text and "ml.m5.large" in text
    assert "schedule: {'cron_expression': '0 * * * ? *'}" in text
    data = yaml.safe_load((ROOT / "configs/monitor_sagemaker.yaml").read_text())
    data["schedule"] = {"cron_expresion": "0 * * * ? *"}
    path = tmp_path / "monitor_sagemaker.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="cron_expresion"):
        load_overlay(path, monitor_steps(["router"]))
    data["schedule"] = {"cron_expression": "0 * * * *"}  # Unix cron: ZenML accepts it, SageMaker's EventBridge not
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="AWS cron"):
        load_overlay(path, monitor_steps(["router"]))


def test_dry_run_cli(tmp_path):
    from tests.conftest import run_cli

    res = run_cli("--stack", "sagemaker", "--pipeline", "child", "--group", "succulents", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "train_model" in res.stdout and "ml.g5.xlarge" in res.stdout
    bad = run_cli("--stack", "local", "--pipeline", "child", "--group", "succulents", "--dry-run")
    assert bad.returncode == 2 and "--dry-run plans SageMaker runs" in bad.stderr


def test_training_step_ids_match_a_real_run(child_run):
    assert set(child_run.steps) == set(step_ids(2))


def test_pipelines_compile_for_the_sagemaker_stack(shard_set_id, demo_catalog, monkeypatch):
    """As far as ZenML goes without AWS: register the stack, compile the child and data pipelines for it."""
    from zenml.client import Client
    from zenml.config.compiler import Compiler
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.stack import Stack

    from fieldguide.keys import ModelKey
    from pipelines.child import child_pipeline
    from pipelines.data import data_pipeline
    from pipelines.runner import data_parameters, model_parameters
    from stacks import register_stack

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    spec = expand_env(load_stack_spec(ROOT / "stacks/sagemaker.yaml"))
    spec["components"]["experiment_tracker"]["configuration"]["tracking_token"] = "test-token"  # no secret store
    stack = Stack.from_model(Client().get_stack(register_stack(spec)))

    params, rest = model_parameters(ROOT, ModelKey.child("succulents"), None, "sagemaker")
    assert params["experiment_tracker"] == "fieldguide-mlflow-server" and params["group"] == "succulents"
    pipeline = child_pipeline.with_options(**rest)
    pipeline.prepare(shard_set_id=shard_set_id, **params)
    # with_options keeps `steps` as run arguments, which ZenML applies at run time: the same here.
    run_config = PipelineRunConfiguration(steps=rest.get("steps", {}))
    snapshot = Compiler().compile(pipeline=pipeline, stack=stack, run_configuration=run_config)
    steps = snapshot.step_configurations
    assert set(steps) == set(step_ids(len(params["trials"])))
    key = "orchestrator:fieldguide-sagemaker-orchestrator"  # ZenML resolves "orchestrator.sagemaker" to the component
    train = steps["train_model"].config.settings[key]
    assert train.instance_type == "ml.g5.xlarge" and train.use_training_step
    assert steps["tune_trial_0"].config.settings[key].instance_type == "ml.g5.xlarge"
    assert steps["report_drift"].config.settings[key].instance_type == "ml.m5.xlarge"  # the pipeline-level default
    assert snapshot.pipeline_configuration.settings["docker"].parent_image == "python:3.11-slim"

    data_params, data_rest = data_parameters(ROOT, None, str(demo_catalog), "sagemaker")
    assert set(data_rest.get("steps", {})) <= set(DATA_STEPS)
    data = data_pipeline.with_options(**data_rest)
    data.prepare(**data_params)
    data_run_config = PipelineRunConfiguration(steps=data_rest.get("steps", {}))
    compiled = Compiler().compile(pipeline=data, stack=stack, run_configuration=data_run_config)
    assert compiled.step_configurations["ingest_catalog"].config.settings[key].instance_type == "ml.t3.medium"
    assert compiled.step_configurations["validate_images"].config.settings[key].instance_type == "ml.m5.2xlarge"

    from pipelines.release import release_eval_pipeline
    from pipelines.runner import release_options

    release = release_eval_pipeline.with_options(**release_options(ROOT, None, "sagemaker"))
    release.prepare(shard_set_id=shard_set_id, versions={}, ks=[1, 2])
    compiled = Compiler().compile(pipeline=release, stack=stack, run_configuration=PipelineRunConfiguration())
    evaluate = compiled.step_configurations["evaluate_release"].config.settings
    assert evaluate[key].instance_type == "ml.m5.xlarge" and evaluate["docker"].requirements == "requirements.txt"


def test_overlay_images_leave_torch_and_cuda_to_the_requirements():
    """The pairing written down in the README: requirements.txt pins torch and the CUDA 13 wheels it was built
    with; the SageMaker images start from a Python image without a torch (and CUDA) of their own."""
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert pins["torch"] == "2.14.1" and pins["nvidia-cuda-runtime"].startswith("13.")
    assert pins["nvidia-cudnn-cu13"] and "nvidia-cudnn-cu12" not in pins
    for overlay in OVERLAYS:
        image = (yaml.safe_load(overlay.read_text()).get("settings") or {}).get("docker", {}).get("parent_image")
        assert image in (None, "python:3.11-slim"), f"{overlay.name}: {image} may bring another torch/CUDA"
    readme = (ROOT / "README.md").read_text()
    assert "torch 2.14.1" in readme and "CUDA 13.0" in readme and "driver" in readme


def test_changed_bucket_updates_the_registered_stack(tmp_path):
    """`make stack-sagemaker` twice with another bucket: the S3 artifact store (and orchestrator) follow it."""
    import os
    import subprocess

    (tmp_path / "repo").mkdir()
    env = {
        **os.environ,
        **AWS_ENV,
        "ZENML_CONFIG_PATH": str(tmp_path / "zenml"),  # a store of its own: the session's stays on `local`
        "ZENML_REPOSITORY_PATH": str(tmp_path / "repo"),
        "FIELDGUIDE_HOME": str(tmp_path),
    }

    def make(**overrides: str) -> subprocess.CompletedProcess:
        cmd = ["make", "-s", "stack-sagemaker"]
        res = subprocess.run(cmd, cwd=ROOT, env={**env, **overrides}, capture_output=True, text=True, timeout=300)
        res.stdout += res.stderr  # what the user sees
        return res

    def artifact_store_path() -> str:
        code = (
            "from zenml.client import Client; "
            "print(Client().active_stack_model.components['artifact_store'][0].configuration['path'])"
        )
        res = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", code], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip().splitlines()[-1]

    missing = make()
    assert missing.returncode != 0 and "zenml secret create fieldguide_mlflow" in missing.stderr, missing.stderr
    zenml = [str(ROOT / ".venv/bin/zenml"), "secret", "create", "fieldguide_mlflow", "--token=test-token"]
    subprocess.run(zenml, env=env, check=True, capture_output=True, timeout=120)
    first = make()
    assert first.returncode == 0 and "active stack: fieldguide-sagemaker" in first.stdout, first.stderr
    assert artifact_store_path() == "s3://fieldguide-test/fieldguide/artifacts"
    moved = make(FIELDGUIDE_S3_BUCKET="fieldguide-moved")
    assert moved.returncode == 0, moved.stderr
    assert "updated artifact_store 'fieldguide-s3-artifacts': path" in moved.stdout
    assert "updated orchestrator 'fieldguide-sagemaker-orchestrator': bucket" in moved.stdout
    assert artifact_store_path() == "s3://fieldguide-moved/fieldguide/artifacts"
    again = make(FIELDGUIDE_S3_BUCKET="fieldguide-moved")
    assert again.returncode == 0 and "updated" not in again.stdout, again.stdout


def test_deploy_overlay_puts_releases_on_sagemaker_endpoints():
    """On the SageMaker stacks configs/deploy_sagemaker.yaml turns the target to SageMaker; its ${VAR}s are named."""
    from fieldguide.config import from_dict
    from fieldguide.runconfig import load_run_config
    from fieldguide.serve.endpoints import EndpointSettings
    from stacks import expand_env

    assert load_run_config(ROOT, "deploy").params.target == "local"
    settings = load_run_config(ROOT, "deploy", cloud="sagemaker").params.sagemaker
    raw = {k: v for k, v in vars(settings).items() if k != "alarms"}
    typed = from_dict(EndpointSettings, expand_env(raw, AWS_ENV, what="deploy_sagemaker.yaml: sagemaker"))
    assert typed.role_arn == AWS_ENV["FIELDGUIDE_SAGEMAKER_ROLE_ARN"] and typed.region == "eu-west-1"
    assert typed.production_instance_type == "ml.c5.xlarge" and typed.traffic_routing == "CANARY"
    with pytest.raises(ConfigError, match="FIELDGUIDE_SAGEMAKER_ROLE_ARN"):
        expand_env(raw, {}, what="deploy_sagemaker.yaml: sagemaker")
    with pytest.raises(ConfigError, match="invoke_as"):
        EndpointSettings(invoke_as="multipart")
