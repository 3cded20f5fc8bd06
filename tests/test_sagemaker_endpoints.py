"""The SageMaker rollout target against moto's server over HTTP (ECR, IAM, SageMaker, sagemaker-runtime, CloudWatch).

Promoting a release marks its model versions as production in the session's registry: this module runs after the
modules whose quality gates compare new versions with no production version (test_evaluation).

moto has no UpdateEndpoint: that one call goes through botocore's Stubber (its request validated against the
service model by the client, its parameters compared with the expected blue/green policy), and its effect is then
applied to moto through the public API (the endpoint recreated on the new config), as SageMaker would after the
traffic shift. moto answers `invoke_endpoint` from a queue of results: the tests feed it the in-process answers
of the same release (or one species for everything), in the order the staging checks send the images.
"""

import json
from pathlib import Path

import pytest
import yaml
from botocore.stub import ANY, Stubber

from tests.conftest import ROOT, deploy_config, moto_client, moto_env, moto_server

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


class UpdateEndpointStubber(Stubber):
    """botocore's Stubber for UpdateEndpoint only: every other call of the client still goes to moto."""

    OPERATION = "sagemaker.UpdateEndpoint"

    def activate(self) -> None:
        events = self.client.meta.events
        events.register_first(
            f"before-parameter-build.{self.OPERATION}",
            self._assert_expected_params,
            unique_id=self._expected_params_event_id,
        )
        events.register(f"before-call.{self.OPERATION}", self._get_response_handler, unique_id=self._event_id)

    def deactivate(self) -> None:
        events = self.client.meta.events
        events.unregister(f"before-parameter-build.{self.OPERATION}", unique_id=self._expected_params_event_id)
        events.unregister(f"before-call.{self.OPERATION}", unique_id=self._event_id)


class Aws:
    """moto's server, the clients the SageMaker target uses, and what the tests feed and observe."""

    def __init__(self, url: str) -> None:
        from fieldguide.serve.endpoints import Clients

        def client(name: str):
            return moto_client(name, url, REGION)

        self.url = url
        self.moto = client("sagemaker")  # plain: what the tests read and what applies an update's effect
        self.clients = Clients(client("sagemaker"), client("sagemaker-runtime"), client("ecr"), client("cloudwatch"))
        self.stubber = UpdateEndpointStubber(self.clients.sagemaker)
        self.stubber.activate()
        self.updates: list[dict] = []  # every UpdateEndpoint the target issued (recorded before the Stubber answers)
        self.rolled_back: set[str] = set()  # endpoint configs whose update an alarm "rolls back"
        events = self.clients.sagemaker.meta.events
        events.register_first("before-parameter-build.sagemaker.UpdateEndpoint", self._record)
        events.register("after-call.sagemaker.UpdateEndpoint", self._apply)

    def _record(self, params, **_):
        self.updates.append(params)

    def _apply(self, **_):
        """What SageMaker does once the blue/green shift completes: the endpoint now runs the new config (unless
        an alarm fired: then it is back on the old one, as after an automatic rollback)."""
        update = self.updates[-1]
        if update["EndpointConfigName"] in self.rolled_back:
            return
        self.moto.delete_endpoint(EndpointName=update["EndpointName"])
        self.moto.create_endpoint(EndpointName=update["EndpointName"], EndpointConfigName=update["EndpointConfigName"])

    def push_image(self, release_id: str) -> None:
        """An image in ECR tagged with the release id (what `make sagemaker-image` pushes)."""
        digest = "sha256:" + release_id.encode().hex().ljust(64, "0")[:64]
        media = "application/vnd.docker.distribution.manifest.v2+json"
        manifest = {"schemaVersion": 2, "mediaType": media, "config": {"digest": digest}, "layers": []}
        self.clients.ecr.put_image(repositoryName="fieldguide", imageManifest=json.dumps(manifest), imageTag=release_id)

    def feed(self, answers: list[dict]) -> None:
        """Queue moto's invoke_endpoint results: one per distinct image the checks will send, in order."""
        import httpx

        results = [{"Body": json.dumps(a), "ContentType": "application/json"} for a in answers]
        body = {"account_id": ACCOUNT, "region": REGION, "results": results}
        httpx.post(f"{self.url}/moto-api/static/sagemaker/endpoint-results", json=body, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def aws():
    from fieldguide.serve import endpoints

    with moto_server() as url, pytest.MonkeyPatch.context() as mp:
        for key, value in moto_env(url, REGION).items():
            mp.setenv(key, value)
        state = Aws(url)
        state.clients.ecr.create_repository(repositoryName="fieldguide")
        mp.setattr(endpoints.Clients, "of", classmethod(lambda cls, settings: state.clients))
        yield state


@pytest.fixture(scope="module")
def config(aws, tmp_path_factory) -> Path:
    """A deploy config on free ports whose target is SageMaker, with a role made in moto's IAM."""
    iam = moto_client("iam", aws.url, REGION)
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "*"}]}
    role = iam.create_role(RoleName="fieldguide-sagemaker", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    path = deploy_config(tmp_path_factory.mktemp("sagemaker") / "deploy.yaml")
    data = yaml.safe_load(path.read_text())
    overlay = yaml.safe_load((ROOT / "configs/deploy_sagemaker.yaml").read_text())["parameters"]
    # moto's server decodes request bodies as UTF-8: the checks send the images as base64 JSON.
    overlay["sagemaker"].update(region=REGION, role_arn=role, poll_s=0.1, wait_timeout_s=30, invoke_as="base64-json")
    data["parameters"].update(overlay, accuracy_sample=48, latency_requests=5)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def settings(config):
    """The test config's SageMaker settings (endpoint config names carry its instance settings)."""
    from pipelines.deploy_runs import deploy_config as load_deploy

    return load_deploy(ROOT, str(config)).sagemaker


def production_config(settings, release_id: str) -> str:
    from fieldguide.serve.endpoints import config_name

    return config_name(settings, release_id, "production")


@pytest.fixture(scope="module")
def answers(releases, dataset, config, tmp_path_factory) -> list[dict]:
    """The good release's in-process answers to the held-out images the staging checks send, in their order."""
    from zenml.client import Client

    from fieldguide.serve.predictor import TwoStagePredictor, write_release
    from fieldguide.serve.release import Release
    from fieldguide.serve.staging import held_out_samples
    from pipelines.deploy_runs import deploy_config as load_deploy
    from registry.versions import get_version, load_model

    cfg = load_deploy(ROOT, str(config))
    bundles = {name: load_model(get_version(vid)) for name, vid in releases.good.items()}
    groups = list(bundles["router"].meta.classes)
    release = Release("in-process", {}, {}, groups, "", serving=cfg.serving)
    predictor = TwoStagePredictor(write_release(release, bundles, tmp_path_factory.mktemp("in-process")))
    shard_set = Client().get_artifact_version(dataset.shard_set_id).load()
    samples = held_out_samples(shard_set, cfg.accuracy_sample)
    return [predictor.describe(predictor.forward(predictor.decode(jpeg)[None])[0]) for jpeg, _ in samples]


POLICY = {
    "BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {
            "Type": "CANARY",
            "WaitIntervalInSeconds": 300,
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
        },
        "TerminationWaitInSeconds": 300,
        "MaximumExecutionTimeoutInSeconds": 3600,
    },
    "AutoRollbackConfiguration": {
        "Alarms": [
            {"AlarmName": "fieldguide-production-Invocation5XXErrors"},
            {"AlarmName": "fieldguide-production-ModelLatency"},
        ]
    },
}


def expect_update(aws, settings, release_id: str, policy=POLICY) -> None:
    """The Stubber's answer to the next UpdateEndpoint, given exactly these parameters."""
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/fieldguide-production"
    expected = {
        "EndpointName": "fieldguide-production",
        "EndpointConfigName": production_config(settings, release_id),
        "DeploymentConfig": policy,
    }
    aws.stubber.add_response("update_endpoint", {"EndpointArn": arn}, expected_params=expected)


@pytest.fixture(scope="module")
def rollouts(aws, config, settings, answers, releases, dataset):
    """Four rollouts to the SageMaker target: the first creates production, the second updates it, the third
    (answering one species for every image) fails its checks, the fourth passes them but its update is rolled
    back by SageMaker (an alarm); the releases are retired after."""
    from pipelines.deploy_runs import new_release_id, run_deploy
    from registry.releases import ARCHIVED, set_release
    from registry.releases import now as stamp

    ids = [f"{new_release_id()}-sm{i}" for i in range(4)]
    for release_id in ids:
        aws.push_image(release_id)
    expect_update(aws, settings, ids[1])
    expect_update(aws, settings, ids[3])
    aws.rolled_back.add(production_config(settings, ids[3]))
    outcomes = {}
    feeds = (answers, answers, [answers[0]] * len(answers), answers)
    for release_id, feed in zip(ids, feeds, strict=True):
        aws.feed(feed)
        try:
            run_deploy(ROOT, str(config), versions=releases.good, by="tester", dataset=dataset, release_id=release_id)
            outcomes[release_id] = "promoted"
        except Exception as exc:  # noqa: BLE001 - the third and fourth are meant to fail
            outcomes[release_id] = f"failed: {exc}"
    yield ids, outcomes
    from fieldguide.serve.servers import stop_all
    from registry.promotion import serving_dir

    stop_all(serving_dir())
    for release_id in ids:  # later modules start from no release in production
        set_release(release_id, status=ARCHIVED, rolled_back_at=stamp())


def test_first_release_creates_production_and_the_next_one_is_a_blue_green_update(aws, rollouts, settings):
    from registry.releases import release_record

    ids, outcomes = rollouts
    assert outcomes[ids[0]] == "promoted" and outcomes[ids[1]] == "promoted", outcomes
    for release_id in ids[:2]:
        record = release_record(release_id)
        assert record["promoted_at"], record
    # The first rollout created the production endpoint; the second (and the fourth) went through UpdateEndpoint
    # with the blue/green policy and the alarms the Stubber expected (it raises on any other parameters).
    updated = [u["EndpointConfigName"] for u in aws.updates]
    assert updated == [production_config(settings, ids[1]), production_config(settings, ids[3])]
    aws.stubber.assert_no_pending_responses()
    alarms = aws.clients.cloudwatch.describe_alarms(AlarmNamePrefix="fieldguide-production")["MetricAlarms"]
    assert {a["MetricName"] for a in alarms} == {"Invocation5XXErrors", "ModelLatency"}
    assert all({"Name": "EndpointName", "Value": "fieldguide-production"} in a["Dimensions"] for a in alarms)
    config = aws.moto.describe_endpoint_config(EndpointConfigName=production_config(settings, ids[1]))
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.c5.xlarge" and variant["InitialInstanceCount"] == 2
    model = aws.moto.describe_model(ModelName=f"fieldguide-{ids[1]}")
    assert model["PrimaryContainer"]["Image"].endswith(f"/fieldguide:{ids[1]}")
    assert model["PrimaryContainer"]["Environment"]["BENTOML_PORT"] == "8080"
    assert model["ExecutionRoleArn"].endswith(":role/fieldguide-sagemaker")


def test_one_class_answers_fail_staging_and_production_is_not_updated(aws, rollouts, settings):
    from registry.releases import release_record

    ids, outcomes = rollouts
    assert outcomes[ids[2]].startswith("failed:"), outcomes
    record = release_record(ids[2])
    assert record["status"] == "failed", record
    assert "[FAIL] serving correctness" in record["failure"] and "sagemaker:fieldguide-staging-" in record["failure"]
    assert "[ok] bad input" in record["failure"]  # the malformed requests went to the local staging server
    assert production_config(settings, ids[2]) not in [u["EndpointConfigName"] for u in aws.updates]
    # Every staging endpoint is gone once its release was promoted or failed.
    names = [e["EndpointName"] for e in aws.moto.list_endpoints()["Endpoints"]]
    assert names == ["fieldguide-production"], names


def test_an_update_rolled_back_by_an_alarm_fails_the_release_and_production_stays(aws, rollouts, settings):
    from registry.releases import production_release, release_record

    ids, outcomes = rollouts
    assert outcomes[ids[3]].startswith("failed:"), outcomes
    record = release_record(ids[3])
    assert record["status"] == "failed" and "SageMaker rolled fieldguide-production back" in record["failure"]
    production = aws.moto.describe_endpoint(EndpointName="fieldguide-production")
    assert production["EndpointConfigName"] == production_config(settings, ids[1])
    assert production_release().id == ids[1]


def test_status_reads_the_endpoints(aws, rollouts, config):
    from tests.conftest import run_cli

    ids, _ = rollouts
    res = run_cli("status", "--config", str(config), env=moto_env(aws.url, REGION))
    assert res.returncode == 0, res.stderr
    assert "production   fieldguide-production" in res.stdout and ids[1] in res.stdout and "InService" in res.stdout


def test_rollback_goes_back_through_a_staging_endpoint_and_a_blue_green_update(
    aws, rollouts, config, settings, answers
):
    from pipelines.deploy_runs import rollback
    from registry.releases import production_release

    ids, _ = rollouts
    aws.feed(answers)
    expect_update(aws, settings, ids[0], policy=ANY)  # the policy itself is checked in the first test
    assert rollback(ROOT, str(config)) == ids[0]
    assert aws.updates[-1]["EndpointConfigName"] == production_config(settings, ids[0])
    aws.stubber.assert_no_pending_responses()
    production = aws.moto.describe_endpoint(EndpointName="fieldguide-production")
    assert production["EndpointConfigName"] == production_config(settings, ids[0])
    assert production_release().id == ids[0]
    assert [e["EndpointName"] for e in aws.moto.list_endpoints()["Endpoints"]] == ["fieldguide-production"]


def test_invoke_sends_the_image_bytes_and_maps_a_container_4xx():
    """What moto cannot show: the default `bytes` body, and a container's 4xx coming back as a ModelError."""
    import io

    import boto3
    from botocore.response import StreamingBody

    from fieldguide.serve.endpoints import Clients, Endpoints, EndpointSettings

    runtime = boto3.client("sagemaker-runtime", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    endpoints = Endpoints(EndpointSettings(), Clients(None, runtime, None, None))
    sent = {"EndpointName": "e", "Body": b"jpeg", "ContentType": "image/jpeg", "Accept": "application/json"}
    answer = json.dumps({"species": [{"name": "Aloe vera"}]}).encode()
    with Stubber(runtime) as stub:
        body = StreamingBody(io.BytesIO(answer), len(answer))
        stub.add_response("invoke_endpoint", {"Body": body}, expected_params={**sent, "InferenceId": ANY})
        stub.add_client_error(
            "invoke_endpoint",
            service_error_code="ModelError",
            http_status_code=424,
            modeled_fields={"OriginalStatusCode": 415, "OriginalMessage": '{"reason": "format_not_allowed"}'},
        )
        assert endpoints.classify("e", b"jpeg") == (200, {"species": [{"name": "Aloe vera"}]})
        assert endpoints.classify("e", b"jpeg") == (415, {"reason": "format_not_allowed"})
