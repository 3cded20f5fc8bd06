"""SageMaker real-time endpoints as a rollout target: release image → model → endpoint config → endpoint.

A release's bento, containerized (`bentoml containerize`), lives in ECR tagged with the release id; SageMaker runs
it with `serve` and talks to `/ping` and `/invocations` on port 8080. Staging is one endpoint per candidate
(`<staging_endpoint>-<release id>`), deleted once the candidate is promoted or failed; production is one endpoint
updated in place with SageMaker's blue/green deployment, which rolls itself back when a CloudWatch alarm fires.
Every AWS call goes through boto3 clients built from the settings (or given, in tests).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fieldguide.errors import ConfigError, FieldguideError

VARIANT = "AllTraffic"
# What a SageMaker container needs besides the bento's own entrypoint: the port of SageMaker's contract.
CONTAINER_ENV = {"BENTOML_PORT": "8080", "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}


@dataclass
class Alarm:
    """A CloudWatch alarm on the production endpoint's variant; while it fires, a blue/green update rolls back."""

    # AWS/SageMaker metric of the variant (Invocation5XXErrors, ModelLatency in microseconds, …).
    metric: str = "Invocation5XXErrors"
    # Statistic compared with the threshold (Sum, Average, Maximum, …).
    statistic: str = "Sum"
    # The alarm fires above this value.
    threshold: float = 1.0
    # Seconds per evaluated period.
    period_s: int = 60
    # Consecutive periods over the threshold before it fires.
    evaluation_periods: int = 2


@dataclass
class EndpointSettings:
    """Where and how releases run on SageMaker (configs/deploy_sagemaker.yaml's `sagemaker`)."""

    # AWS region of the endpoints; empty uses the environment's default region.
    region: str = ""
    # IAM role the SageMaker models run as (needs ECR pull and CloudWatch logs).
    role_arn: str = ""
    # ECR repository (name) holding one image per release, tagged with the release id.
    repository: str = "fieldguide"
    # Staging endpoints are named <this>-<release id>; one per candidate, deleted after its verdict.
    staging_endpoint: str = "fieldguide-staging"
    # The production endpoint (its name is what the app calls; it stays across releases).
    production_endpoint: str = "fieldguide-production"
    # Instance type of a staging endpoint (small: it only answers the checks).
    staging_instance_type: str = "ml.m5.large"
    # Instances of a staging endpoint.
    staging_instance_count: int = 1
    # Instance type of production.
    production_instance_type: str = "ml.c5.xlarge"
    # Instances of production (two or more: an instance can fail without an outage).
    production_instance_count: int = 2
    # Blue/green traffic shifting: ALL_AT_ONCE, CANARY (canary_percent first) or LINEAR (canary_percent per step).
    traffic_routing: str = "CANARY"
    # Percent of capacity shifted first (CANARY) or per step (LINEAR).
    canary_percent: int = 10
    # Seconds the alarms watch each traffic step before the next one.
    wait_interval_s: int = 300
    # Seconds the old (blue) fleet is kept after all traffic moved, for a rollback without a new fleet.
    termination_wait_s: int = 300
    # Longest the whole blue/green update may take before SageMaker rolls it back.
    max_execution_s: int = 3600
    # Alarms that roll an update back (created or updated on the production endpoint before each update).
    alarms: list[Alarm] = field(default_factory=lambda: [Alarm(), Alarm("ModelLatency", "Average", 2_000_000, 60, 3)])
    # Longest wait for an endpoint to reach InService.
    wait_timeout_s: float = 3600.0
    # Seconds between DescribeEndpoint polls.
    poll_s: float = 15.0
    # How the staging checks send images through invoke_endpoint: `bytes` (what apps send) or `base64-json`
    # ({"image": base64}, for emulators such as moto's server, which decodes every request body as UTF-8).
    invoke_as: str = "bytes"

    def __post_init__(self) -> None:
        """Refuse what SageMaker would refuse, before a rollout pays for staging."""
        problems = []
        if self.invoke_as not in ("bytes", "base64-json"):
            problems.append(f"invoke_as {self.invoke_as!r}: use bytes or base64-json")
        if self.traffic_routing not in ("ALL_AT_ONCE", "CANARY", "LINEAR"):
            problems.append(f"traffic_routing {self.traffic_routing!r}: use ALL_AT_ONCE, CANARY or LINEAR")
        if not 1 <= self.canary_percent <= 100:
            problems.append(f"canary_percent {self.canary_percent}: 1 to 100")
        if min(self.staging_instance_count, self.production_instance_count) < 1:
            problems.append("instance counts must be at least 1")
        if not 600 <= self.max_execution_s <= 28800:
            problems.append(f"max_execution_s {self.max_execution_s}: 600 to 28800 (SageMaker's limits)")
        for name in ("wait_interval_s", "termination_wait_s"):
            if not 0 <= getattr(self, name) <= 3600:
                problems.append(f"{name} {getattr(self, name)}: 0 to 3600 (SageMaker's limits)")
        if problems:
            raise ConfigError("sagemaker settings: " + "; ".join(problems))


@dataclass
class Clients:
    """The boto3 clients of one target."""

    sagemaker: Any
    runtime: Any
    ecr: Any
    cloudwatch: Any

    @classmethod
    def of(cls, settings: EndpointSettings) -> Clients:
        """Clients of the settings' region (credentials and endpoint URLs from boto3's usual chain)."""
        import boto3

        session = boto3.Session(region_name=settings.region or None)
        return cls(*(session.client(name) for name in ("sagemaker", "sagemaker-runtime", "ecr", "cloudwatch")))


def aws_error(exc: Exception) -> str:
    """A botocore ClientError's code and message, or the exception's text."""
    response = getattr(exc, "response", None) or {}
    err = response.get("Error", {})
    return f"{err.get('Code', type(exc).__name__)}: {err.get('Message', exc)}"


def model_name(release_id: str) -> str:
    """The SageMaker model of a release (names are unique per account and region)."""
    return f"fieldguide-{release_id}"


def instances(settings: EndpointSettings, role: str) -> tuple[str, int]:
    """(instance type, count) of a role: production, or staging."""
    if role == "production":
        return settings.production_instance_type, settings.production_instance_count
    return settings.staging_instance_type, settings.staging_instance_count


def config_name(settings: EndpointSettings, release_id: str, role: str) -> str:
    """The endpoint config of a release in a role, named with its instances: changed settings make a new config."""
    from fieldguide.fingerprint import digest

    return f"fieldguide-{role}-{release_id}-{digest(list(instances(settings, role)))[:6]}"


class Endpoints:
    """SageMaker operations of fieldguide's rollout, on `clients` (built from `settings` when not given)."""

    def __init__(self, settings: EndpointSettings, clients: Clients | None = None) -> None:
        self.settings = settings
        self.clients = clients or Clients.of(settings)

    def staging_name(self, release_id: str) -> str:
        """The staging endpoint of a candidate."""
        return f"{self.settings.staging_endpoint}-{release_id}"

    def has_image(self, release_id: str) -> bool:
        """Is the release's image in the ECR repository?"""
        ecr = self.clients.ecr
        try:
            ids = [{"imageTag": release_id}]
            return bool(ecr.describe_images(repositoryName=self.settings.repository, imageIds=ids)["imageDetails"])
        except (ecr.exceptions.ImageNotFoundException, ecr.exceptions.RepositoryNotFoundException):
            return False

    def image(self, release_id: str) -> str:
        """The release's image URI in ECR.

        Raises:
            FieldguideError: when the repository or the tag is missing, saying how to push it.
        """
        repo = self.settings.repository
        if not self.has_image(release_id):
            raise FieldguideError(
                f"no image {repo}:{release_id} in ECR: build and push it with "
                f"`make sagemaker-image RELEASE={release_id}` (README: Running on AWS SageMaker)"
            )
        uri = self.clients.ecr.describe_repositories(repositoryNames=[repo])["repositories"][0]["repositoryUri"]
        return f"{uri}:{release_id}"

    def ensure_model(self, release_id: str) -> str:
        """The release's SageMaker model, created from its ECR image when it does not exist yet."""
        name = model_name(release_id)
        try:
            self.clients.sagemaker.describe_model(ModelName=name)
            return name
        except self.clients.sagemaker.exceptions.ClientError:
            pass
        if not self.settings.role_arn:
            raise FieldguideError("sagemaker.role_arn is empty: set FIELDGUIDE_SAGEMAKER_ROLE_ARN (a SageMaker role)")
        self.clients.sagemaker.create_model(
            ModelName=name,
            PrimaryContainer={"Image": self.image(release_id), "Environment": dict(CONTAINER_ENV)},
            ExecutionRoleArn=self.settings.role_arn,
            Tags=[{"Key": "fieldguide-release", "Value": release_id}],
        )
        return name

    def create_config(self, release_id: str, role: str) -> str:
        """An endpoint config serving the release with the role's (staging, production) instances."""
        instance_type, count = instances(self.settings, role)
        name = config_name(self.settings, release_id, role)
        variant = {
            "VariantName": VARIANT,
            "ModelName": self.ensure_model(release_id),
            "InstanceType": instance_type,
            "InitialInstanceCount": count,
        }
        try:
            self.clients.sagemaker.describe_endpoint_config(EndpointConfigName=name)
        except self.clients.sagemaker.exceptions.ClientError:
            self.clients.sagemaker.create_endpoint_config(
                EndpointConfigName=name,
                ProductionVariants=[variant],
                Tags=[{"Key": "fieldguide-release", "Value": release_id}],
            )
        return name

    def describe(self, endpoint: str) -> dict[str, Any] | None:
        """DescribeEndpoint, or None when the endpoint does not exist."""
        try:
            return self.clients.sagemaker.describe_endpoint(EndpointName=endpoint)
        except self.clients.sagemaker.exceptions.ClientError as exc:
            if "Could not find" in aws_error(exc):
                return None
            raise

    def serving(self, info: dict[str, Any] | None) -> str:
        """The release an endpoint serves, from its DescribeEndpoint answer ('' when it does not exist)."""
        if not info:
            return ""
        config = self.clients.sagemaker.describe_endpoint_config(EndpointConfigName=info["EndpointConfigName"])
        model = config["ProductionVariants"][0]["ModelName"]
        return model.removeprefix("fieldguide-")

    def wait(self, endpoint: str, timeout_s: float = 0) -> dict[str, Any]:
        """Poll until the endpoint is InService (at most `timeout_s`, default the settings' wait_timeout_s).

        Raises:
            FieldguideError: when it failed, disappeared, or stayed in transition past the timeout.
        """
        deadline = time.monotonic() + (timeout_s or self.settings.wait_timeout_s)
        while True:
            info = self.describe(endpoint)
            status = info["EndpointStatus"] if info else "missing"
            if status == "InService":
                return info
            if status in ("Failed", "UpdateRollbackFailed", "OutOfService", "missing"):
                reason = (info or {}).get("FailureReason", "")
                raise FieldguideError(f"endpoint {endpoint} is {status}" + (f": {reason}" if reason else ""))
            if time.monotonic() > deadline:
                raise FieldguideError(f"endpoint {endpoint} still {status} after {self.settings.wait_timeout_s:.0f} s")
            time.sleep(self.settings.poll_s)

    def start_staging(self, release_id: str) -> str:
        """Create (or reuse) the candidate's staging endpoint and wait until it is InService; its name."""
        name = self.staging_name(release_id)
        config = self.create_config(release_id, "staging")
        if self.describe(name) is None:
            self.clients.sagemaker.create_endpoint(
                EndpointName=name, EndpointConfigName=config, Tags=[{"Key": "fieldguide-role", "Value": "staging"}]
            )
        print(f"staging endpoint {name}: {config}", flush=True)
        self.wait(name)
        return name

    def delete(self, endpoint: str, wait: bool = False) -> None:
        """Delete an endpoint if it exists (its config and model stay, for a later rollback); `wait` until gone."""
        if self.describe(endpoint) is None:
            return
        self.clients.sagemaker.delete_endpoint(EndpointName=endpoint)
        deadline = time.monotonic() + self.settings.wait_timeout_s
        while wait and self.describe(endpoint) is not None:
            if time.monotonic() > deadline:
                raise FieldguideError(
                    f"endpoint {endpoint} still exists {self.settings.wait_timeout_s:.0f} s after deletion"
                )
            time.sleep(self.settings.poll_s)

    def put_alarms(self) -> list[str]:
        """Create or update the production alarms; their names."""
        s = self.settings
        names = []
        for alarm in s.alarms:
            name = f"{s.production_endpoint}-{alarm.metric}"
            self.clients.cloudwatch.put_metric_alarm(
                AlarmName=name,
                AlarmDescription=f"rolls a blue/green update of {s.production_endpoint} back",
                Namespace="AWS/SageMaker",
                MetricName=alarm.metric,
                Dimensions=[
                    {"Name": "EndpointName", "Value": s.production_endpoint},
                    {"Name": "VariantName", "Value": VARIANT},
                ],
                Statistic=alarm.statistic,
                Period=alarm.period_s,
                EvaluationPeriods=alarm.evaluation_periods,
                Threshold=alarm.threshold,
                ComparisonOperator="GreaterThanThreshold",
                TreatMissingData="notBreaching",
            )
            names.append(name)
        return names

    def deployment_config(self, alarms: list[str]) -> dict[str, Any]:
        """SageMaker's blue/green update policy with automatic rollback on `alarms`."""
        s = self.settings
        routing: dict[str, Any] = {"Type": s.traffic_routing, "WaitIntervalInSeconds": s.wait_interval_s}
        if s.traffic_routing == "CANARY":
            routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": s.canary_percent}
        elif s.traffic_routing == "LINEAR":
            routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": s.canary_percent}
        return {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": routing,
                "TerminationWaitInSeconds": s.termination_wait_s,
                "MaximumExecutionTimeoutInSeconds": s.max_execution_s,
            },
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarms]},
        }

    def go_live(self, release_id: str) -> str:
        """Production serves the release: created the first time, else a blue/green update; the endpoint's name.

        Raises:
            FieldguideError: when the endpoint failed, or SageMaker rolled the update back (an alarm fired).
        """
        s = self.settings
        config = self.create_config(release_id, "production")
        current = self.describe(s.production_endpoint)
        if current is not None and current["EndpointStatus"] == "Failed":  # a first creation that failed: anew
            print(f"production endpoint {s.production_endpoint} is Failed; creating it again", flush=True)
            self.delete(s.production_endpoint, wait=True)
            current = None
        if current is None:
            self.clients.sagemaker.create_endpoint(
                EndpointName=s.production_endpoint,
                EndpointConfigName=config,
                Tags=[{"Key": "fieldguide-role", "Value": "production"}],
            )
        else:
            self.wait(s.production_endpoint)  # an update in flight must finish first
            self.clients.sagemaker.update_endpoint(
                EndpointName=s.production_endpoint,
                EndpointConfigName=config,
                DeploymentConfig=self.deployment_config(self.put_alarms()),
            )
            print(f"production endpoint {s.production_endpoint}: blue/green update to {config}", flush=True)
        # An update may take its whole budget and then roll back: wait past it, never decide while it runs.
        info = self.wait(s.production_endpoint, max(s.wait_timeout_s, s.max_execution_s + s.termination_wait_s))
        if info["EndpointConfigName"] != config:
            raise FieldguideError(
                f"SageMaker rolled {s.production_endpoint} back to {info['EndpointConfigName']} (an alarm fired "
                f"during the blue/green update); production still serves {self.serving(info)}"
            )
        return s.production_endpoint

    def classify(self, endpoint: str, image: bytes) -> tuple[int, dict[str, Any]]:
        """One image through the endpoint, sent as the settings' `invoke_as` says."""
        if self.settings.invoke_as == "base64-json":
            body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
            return self.invoke(endpoint, body, "application/json")
        return self.invoke(endpoint, image)

    def invoke(self, endpoint: str, body: bytes, content_type: str = "image/jpeg") -> tuple[int, dict[str, Any]]:
        """POST /invocations through sagemaker-runtime: (status, JSON body); a container's 4xx/5xx is a ModelError."""
        runtime = self.clients.runtime
        # A fresh InferenceId per request: SageMaker's data capture keys on it (and moto's endpoint emulator keys
        # its answers on it with the body, so each request of each rollout gets its own answer).
        request = {"EndpointName": endpoint, "Body": body, "ContentType": content_type, "Accept": "application/json"}
        try:
            out = runtime.invoke_endpoint(**request, InferenceId=uuid.uuid4().hex)
        except runtime.exceptions.ModelError as exc:
            status = int(exc.response.get("OriginalStatusCode") or 0)
            try:
                return status, json.loads(exc.response.get("OriginalMessage") or "{}")
            except ValueError:
                return status, {}
        try:
            return 200, json.loads(out["Body"].read())
        except ValueError:
            return 200, {}

    def status_rows(self) -> list[dict[str, str]]:
        """Production and every staging endpoint: role, name, release, status."""
        s = self.settings
        rows = []
        pages = self.clients.sagemaker.get_paginator("list_endpoints").paginate(NameContains=s.staging_endpoint)
        names = [s.production_endpoint] + sorted(
            e["EndpointName"]
            for page in pages
            for e in page["Endpoints"]
            if e["EndpointName"].startswith(s.staging_endpoint + "-")
        )
        for name in names:
            info = self.describe(name)
            rows.append(
                {
                    "role": "production" if name == s.production_endpoint else "staging",
                    "endpoint": name,
                    "release": self.serving(info),
                    "status": info["EndpointStatus"] if info else "not created",
                }
            )
        return rows


def push_image(release_id: str, settings: EndpointSettings, clients: Clients | None = None) -> str:
    """Containerize the release's bento and push it to ECR as <repository>:<release id>; the image URI.

    Needs Docker on this machine and ECR push rights; the repository is created when missing.

    Raises:
        FieldguideError: naming the command that failed (no Docker, no bento, a refused push).
    """
    import shutil
    import subprocess

    from fieldguide.serve.release import BENTO_NAME
    from fieldguide.serve.servers import bentoml_bin

    if shutil.which("docker") is None:
        raise FieldguideError("`docker` is not on PATH: building the SageMaker image needs Docker on this machine")
    ecr = (clients or Clients.of(settings)).ecr
    try:
        repo = ecr.describe_repositories(repositoryNames=[settings.repository])["repositories"][0]
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(repositoryName=settings.repository)["repository"]
    image = f"{repo['repositoryUri']}:{release_id}"
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    steps = [
        ([bentoml_bin(), "containerize", f"{BENTO_NAME}:{release_id}", "--image-tag", image], None),
        (["docker", "login", "--username", user, "--password-stdin", auth["proxyEndpoint"]], password),
        (["docker", "push", image], None),
    ]
    for cmd, stdin in steps:
        res = subprocess.run(cmd, input=stdin, text=True, capture_output=True)
        if res.returncode != 0:
            raise FieldguideError(f"`{' '.join(cmd[:3])}` failed: {(res.stderr or res.stdout).strip()[-1500:]}")
    print(f"pushed {image}", flush=True)
    return image
