"""The child pipeline submitted through ZenML's SageMaker orchestrator to moto: the SageMaker pipeline that arrives.

Nothing leaves the machine: a throwaway ZenML server (its own config and SQLite database), moto's S3/SageMaker
server, the Docker build skipped (the given image is used as is) and SageMaker SDK telemetry opted out.
No step runs: moto records the pipeline and marks its execution Succeeded at once.
"""

import fnmatch
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from fieldguide.ports import free_port
from tests.conftest import ROOT, moto_client, moto_server

ACCOUNT, REGION, BUCKET = "123456789012", "eu-west-1", "fieldguide-test"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/fieldguide-sagemaker"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
IMAGE = f"{REGISTRY}/fieldguide:test"

pytestmark = pytest.mark.slow


def clean_env() -> dict[str, str]:
    """This process's environment without any ZenML, AWS or SageMaker setting (never the developer's)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "AWS_", "SAGEMAKER_"))}


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        s3 = moto_client("s3", url, REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield url


@pytest.fixture(scope="module")
def zenml_server(tmp_path_factory):
    """A ZenML server of its own (not `zenml login --local`: ZenML takes that for a local store and refuses)."""
    home = tmp_path_factory.mktemp("zenml-server")
    port = free_port()
    env = clean_env() | {
        "ZENML_CONFIG_PATH": str(home / "config"),  # its own user id: a server id that is not the client's
        "ZENML_STORE_URL": f"sqlite:///{home}/zenml.db",
        "ZENML_LOCAL_STORES_PATH": str(home / "local_stores"),
        "ZENML_SERVER": "true",
        "ZENML_SERVER_AUTH_SCHEME": "NO_AUTH",
        "ZENML_SERVER_AUTO_ACTIVATE": "true",
        "ZENML_ANALYTICS_OPT_IN": "false",
    }
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    cmd = ["-m", "uvicorn", "zenml.zen_server.zen_server_api:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([sys.executable, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api/v1/info", timeout=2)  # noqa: S310 - loopback
                break
            except OSError:
                assert time.monotonic() < deadline, "ZenML server did not start in 120 s"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def submitted(moto_url, zenml_server, tmp_path_factory):
    """Run tests/sagemaker_submit.py; return (its RESULT, moto's SageMaker and S3 clients)."""
    home = tmp_path_factory.mktemp("client")
    (home / "no-repo").mkdir()
    sagemaker_config = home / "sagemaker.yaml"  # the SDK otherwise sends telemetry to an AWS S3 endpoint
    sagemaker_config.write_text(
        yaml.safe_dump({"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    )
    env = clean_env() | {
        "ZENML_CONFIG_PATH": str(home / "zenml"),
        "ZENML_REPOSITORY_PATH": str(home / "no-repo"),
        "ZENML_STORE_URL": zenml_server,
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_ENABLE_RICH_TRACEBACK": "false",
        "AWS_ENDPOINT_URL": moto_url,  # boto3, the SageMaker SDK and s3fs all honour it
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(sagemaker_config),
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(sagemaker_config),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        # stacks/sagemaker.yaml's ${VARS}
        "FIELDGUIDE_SAGEMAKER_ROLE_ARN": ROLE,
        "FIELDGUIDE_S3_BUCKET": BUCKET,
        "FIELDGUIDE_ECR_REGISTRY": REGISTRY,
        "FIELDGUIDE_CODEBUILD_PROJECT": "fieldguide-images",
        "MLFLOW_TRACKING_URI": "https://mlflow.example.org",
        "FIELDGUIDE_TEST_IMAGE": IMAGE,
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/sagemaker_submit.py")],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    clients = {name: moto_client(name, moto_url, REGION) for name in ("sagemaker", "s3")}
    return result, clients


def expected_settings(step: str) -> dict:
    """configs/child_sagemaker.yaml's orchestrator.sagemaker settings of `step` (its patterns applied)."""
    overlay = yaml.safe_load((ROOT / "configs/child_sagemaker.yaml").read_text())
    merged = dict(overlay["settings"]["orchestrator.sagemaker"])
    for pattern, block in overlay.get("steps", {}).items():
        if fnmatch.fnmatch(step, pattern):
            merged |= block["settings"].get("orchestrator.sagemaker", {})
    return merged


def test_child_pipeline_arrives_as_one_sagemaker_step_per_zenml_step(submitted):
    from pipelines.training import step_ids

    result, aws = submitted
    pipeline_name = result["execution_arn"].split(":pipeline/")[1].split("/")[0]
    described = aws["sagemaker"].describe_pipeline(PipelineName=pipeline_name)
    assert described["RoleArn"] == ROLE
    definition = json.loads(described["PipelineDefinition"])
    steps = {s["Name"]: s for s in definition["Steps"]}

    assert sorted(steps) == sorted(result["steps"]) == sorted(step_ids(3))  # configs/child.yaml: 3 trials
    for name, step in steps.items():
        assert sorted(step.get("DependsOn", [])) == sorted(result["steps"][name]), name
        want = expected_settings(name)
        args = step["Arguments"]
        assert step["Type"] == "Training", name  # use_training_step defaults to True
        assert args["ResourceConfig"]["InstanceType"] == want["instance_type"], name
        assert args["ResourceConfig"]["VolumeSizeInGB"] == want["volume_size_in_gb"], name
        assert args["StoppingCondition"]["MaxRuntimeInSeconds"] == want["max_runtime_in_seconds"], name
        assert args["RoleArn"] == ROLE
        assert args["AlgorithmSpecification"]["TrainingImage"] == IMAGE
        assert args["AlgorithmSpecification"]["ContainerArguments"][-2:] == ["--step_name", name]
        assert args["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/"
        assert {"Key": "stage", "Value": "child"} in args["Tags"]
        assert not [k for k in args["Environment"] if k.startswith("AWS_")], name  # no credentials shipped
    assert steps["train_model"]["Arguments"]["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert steps["select_best"]["Arguments"]["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"


def test_execution_started_and_code_uploaded_to_the_artifact_store(submitted):
    result, aws = submitted
    pipeline_name = result["execution_arn"].split(":pipeline/")[1].split("/")[0]
    executions = aws["sagemaker"].list_pipeline_executions(PipelineName=pipeline_name)["PipelineExecutionSummaries"]
    assert [e["PipelineExecutionArn"] for e in executions] == [result["execution_arn"]]
    prefix = f"s3://{BUCKET}/fieldguide/artifacts/code_uploads/"
    assert result["code_path"].startswith(prefix)
    aws["s3"].head_object(Bucket=BUCKET, Key=result["code_path"].removeprefix(f"s3://{BUCKET}/"))
