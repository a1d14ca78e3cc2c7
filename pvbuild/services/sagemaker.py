"""SageMaker JumpStart behind the ``TrainingBackend`` and ``EndpointBackend`` interfaces, with boto3.

Why boto3 ``CreateTrainingJob`` and not the SageMaker Python SDK 3.x ``ModelTrainer``: pvbuild must
choose the job name itself (it is derived from the input digest, so a rerun re-attaches to the job
of the same inputs instead of starting a second), write its record between "created" and "wait",
and poll with its own progress line. ``ModelTrainer.train(wait=False)`` names jobs with a timestamp
and its defaults reach for a default bucket and an execution role lookup. The SDK's JumpStart
resolution is small and public, so pvbuild does the same: ``DescribeHubContent`` on the
``SageMakerPublicHub`` gives the training and inference images, the model artifacts and the script,
per instance family. boto3 is also what every S3-compatible stand-in and moto speak.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pvbuild.errors import PvbuildError
from pvbuild.progress import say
from pvbuild.services.endpoints import CREATING, DELETED, IN_SERVICE, DeployRequest, EndpointError
from pvbuild.services.stores import aws_client
from pvbuild.services.training import COMPLETED, RUNNING, JobState, JobStatus, TrainingRequest

PUBLIC_HUB = "SageMakerPublicHub"
TRAINING_ENTRY_POINT = "transfer_learning.py"  # JumpStart's training script (sagemaker.jumpstart constants)
ENDED = (COMPLETED, JobStatus.FAILED, JobStatus.STOPPED)


class SageMakerError(PvbuildError):
    """A SageMaker API call failed; the message names the call and carries the service's reason."""


def call(what: str, method: Callable[..., Any], **kwargs: Any) -> Any:
    """One boto3 call; service and credential errors become a SageMakerError that says what to fix."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return method(**kwargs)
    except NoCredentialsError as error:
        raise SageMakerError(f"{what}: no AWS credentials; boto3 looks in the environment, ~/.aws and the "
                             "instance role (pvbuild never reads them from its configuration)") from error
    except ClientError as error:
        detail = error.response.get("Error", {})
        raise SageMakerError(f"{what}: {detail.get('Code', 'error')}: {detail.get('Message', error)}") from error
    except BotoCoreError as error:
        raise SageMakerError(f"{what}: {error}") from error


def _not_found(error: SageMakerError) -> bool:
    """SageMaker says "not there" as a ValidationException whose wording varies by API."""
    text = str(error).lower()
    return any(words in text for words in ("could not find", "not found", "does not exist", "resourcenotfound"))


def lookup(what: str, method: Callable[..., Any], **kwargs: Any) -> dict[str, Any] | None:
    """A call on one resource (Describe*, Delete*), or None when the resource does not exist."""
    try:
        reply: dict[str, Any] = call(what, method, **kwargs)
    except SageMakerError as error:
        if _not_found(error):
            return None
        raise
    return reply


class JumpStartModel:
    """A JumpStart model's hub document: images, artifacts and settings, per instance family."""

    def __init__(self, model_id: str, version: str, document: Mapping[str, Any]) -> None:
        self.model_id = model_id
        self.version = version
        self.document = document

    @classmethod
    def describe(cls, client: Any, model_id: str, version: str) -> JumpStartModel:
        wanted: dict[str, str] = {"HubContentVersion": version} if version and version != "*" else {}
        reply = call(f"DescribeHubContent {model_id} {version or 'latest'} (hub {PUBLIC_HUB})",
                     client.describe_hub_content, HubName=PUBLIC_HUB, HubContentType="Model",
                     HubContentName=model_id, **wanted)
        return cls(model_id, str(reply.get("HubContentVersion", version)), json.loads(reply["HubContentDocument"]))

    def _variant(self, which: str, instance_type: str) -> dict[str, Any]:
        """The ``Properties`` of the instance-type variant (family ``g5`` or the full type), aliases resolved."""
        table = self.document.get(f"{which}InstanceTypeVariants") or {}
        variants, aliases = table.get("Variants") or {}, table.get("Aliases") or {}
        family = instance_type.split(".")[1] if instance_type.count(".") == 2 else instance_type
        variant = variants.get(instance_type) or variants.get(family) or {}
        properties = dict(variant.get("Properties") or variant.get("properties") or {})
        return {key: aliases.get(value[1:], value) if isinstance(value, str) and value.startswith("$") else value
                for key, value in properties.items()}

    def image(self, which: str, instance_type: str) -> str:
        """The ``Training`` or ``Hosting`` image: the instance family's variant, else the default."""
        variant = self._variant(which, instance_type)
        image = variant.get("ImageUri") or variant.get("image_uri") or self.document.get(f"{which}EcrUri")
        if not image:
            raise SageMakerError(f"JumpStart model {self.model_id} {self.version} names no {which.lower()} image")
        return str(image)

    def training_artifacts(self, instance_type: str) -> str:
        variant = self._variant("Training", instance_type)
        return str(variant.get("GatedModelEnvVarUri") or variant.get("TrainingArtifactUri")
                   or self.document.get("TrainingArtifactUri") or "")

    def training_environment(self, instance_type: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self._variant("Training", instance_type).get("EnvironmentVariables")
                                            or {}).items()}

    def hosting_environment(self, instance_type: str) -> dict[str, str]:
        defaults = {str(entry["Name"]): str(entry.get("Default", entry.get("DefaultValue", "")))
                    for entry in self.document.get("InferenceEnvironmentVariables") or []}
        extra = self._variant("Hosting", instance_type).get("EnvironmentVariables") or {}
        return {**defaults, **{str(k): str(v) for k, v in extra.items()}}

    def flag(self, name: str) -> bool:
        return bool(self.document.get(name))


def _job_state(reply: Mapping[str, Any]) -> JobState:
    return JobState(
        name=str(reply["TrainingJobName"]), status=str(reply["TrainingJobStatus"]),
        arn=str(reply.get("TrainingJobArn", "")), secondary_status=str(reply.get("SecondaryStatus", "")),
        failure_reason=str(reply.get("FailureReason", "")),
        model_artifacts=str((reply.get("ModelArtifacts") or {}).get("S3ModelArtifacts", "")),
        billable_seconds=reply.get("BillableTimeInSeconds"), training_seconds=reply.get("TrainingTimeInSeconds"),
        metrics={metric_name(str(m["MetricName"])): float(m["Value"]) for m in reply.get("FinalMetricDataList") or []}
        | _spot_saving(reply))


def _spot_saving(reply: Mapping[str, Any]) -> dict[str, float]:
    """What managed spot saved: 1 - billable / training seconds (SageMaker bills spot jobs less)."""
    billable, training = reply.get("BillableTimeInSeconds"), reply.get("TrainingTimeInSeconds")
    if not reply.get("EnableManagedSpotTraining") or not billable or not training:
        return {}
    return {"spot_saving": round(1 - billable / training, 3)}


# JumpStart's metric names (``<framework>:<name>``, its training script's MetricDefinitions) as the
# local trainer names the same numbers, so the report and the leaderboard read one set of names.
JUMPSTART_METRICS = {"train-loss": "train_loss", "eval-loss": "validation_loss", "eval-ppl": "validation_perplexity"}


def metric_name(jumpstart: str) -> str:
    """``huggingface-textgeneration:train-loss`` → ``train_loss``; an unknown one keeps its own name,
    in the same style (``…:epoch-time`` → ``epoch_time``)."""
    short = jumpstart.rpartition(":")[2]
    return JUMPSTART_METRICS.get(short, short.replace("-", "_"))


def _s3_channel(name: str, uri: str, **extra: Any) -> dict[str, Any]:
    return {"ChannelName": name, "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated", **extra}}}


@dataclass(frozen=True)
class Enterprise:
    """The account's rules for every resource (``aws.kms``, ``aws.subnets`` + ``aws.security_group_ids``,
    ``aws.tags``), as the request fields that carry them."""

    kms_key_id: str
    subnets: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    tags: tuple[dict[str, str], ...]

    @classmethod
    def of(cls, aws: Mapping[str, Any]) -> Enterprise:
        tags = sorted((aws.get("tags") or {}).items())
        return cls(str(aws.get("kms") or ""), tuple(aws.get("subnets") or ()),
                   tuple(aws.get("security_group_ids") or ()),
                   tuple({"Key": str(key), "Value": str(value)} for key, value in tags))

    def kms(self, field: str) -> dict[str, str]:
        return {field: self.kms_key_id} if self.kms_key_id else {}

    def vpc(self) -> dict[str, Any]:
        return {"VpcConfig": {"Subnets": list(self.subnets), "SecurityGroupIds": list(self.security_group_ids)}} \
            if self.subnets else {}


class SageMakerTraining:
    """JumpStart fine-tuning jobs: ``CreateTrainingJob`` with the hub's image, artifacts and script."""

    def __init__(self, aws: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.client = aws_client("sagemaker", aws)
        self.role_arn = str(aws["role_arn"])
        self.poll_seconds = float(options["poll_seconds"])
        self.max_runtime = int(options["max_runtime_seconds"])
        self.spot = bool(options.get("spot", False))
        # Spot capacity may keep a job waiting: twice its run time, unless configured.
        self.max_wait = int(options.get("max_wait_seconds") or 2 * self.max_runtime)
        self.instance_count = int(options.get("instance_count", 1))
        self.enterprise = Enterprise.of(aws)

    def _spot(self, request: TrainingRequest) -> dict[str, Any]:
        """Managed spot training: up to ~70 % cheaper; an interrupted job resumes from the checkpoints
        the training script writes to /opt/ml/checkpoints, kept under the job's own S3 prefix."""
        if not self.spot:
            return {"StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime}}
        return {"EnableManagedSpotTraining": True,
                "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime, "MaxWaitTimeInSeconds": self.max_wait},
                "CheckpointConfig": {"S3Uri": f"{request.output_uri.rstrip('/')}/{request.job_name}/checkpoints/",
                                     "LocalPath": "/opt/ml/checkpoints"}}

    def describe(self, job_name: str) -> JobState | None:
        reply = lookup(f"DescribeTrainingJob {job_name}", self.client.describe_training_job, TrainingJobName=job_name)
        return _job_state(reply) if reply is not None else None

    def _input_channels(self, request: TrainingRequest, model: JumpStartModel) -> list[dict[str, Any]]:
        channels = [_s3_channel(name, uri) for name, uri in sorted(request.channels.items())]
        artifacts = model.training_artifacts(request.instance_type)
        if artifacts:  # the base weights; gated models (Llama) need the EULA accepted on this channel
            accepted = bool(request.options["accept_eula"])  # checked before spending: True here
            channel = _s3_channel("model", artifacts, ModelAccessConfig={"AcceptEula": accepted})
            channel.update({"ContentType": "application/x-sagemaker-model", "InputMode": "File",
                            "CompressionType": str(model.document.get("TrainingArtifactCompressionType") or "None")})
            channels.append(channel)
        return channels

    def create(self, request: TrainingRequest) -> JobState:
        base = request.base_model
        model = JumpStartModel.describe(self.client, base.jumpstart_model_id, base.jumpstart_model_version)
        hyperparameters = dict(request.hyperparameters)
        script = str(model.document.get("TrainingScriptUri") or "")
        if script:  # the training toolkit downloads and runs the JumpStart script named here
            hyperparameters.update(sagemaker_program=TRAINING_ENTRY_POINT, sagemaker_submit_directory=script)
        reply = call(f"CreateTrainingJob {request.job_name}", self.client.create_training_job,
                     TrainingJobName=request.job_name, RoleArn=self.role_arn, HyperParameters=hyperparameters,
                     AlgorithmSpecification={
                         "TrainingImage": model.image("Training", request.instance_type), "TrainingInputMode": "File",
                         "MetricDefinitions": list(model.document.get("TrainingMetrics") or [])},
                     InputDataConfig=self._input_channels(request, model),
                     OutputDataConfig={"S3OutputPath": request.output_uri,
                                       "CompressionType": "NONE" if model.flag("DisableOutputCompression") else "GZIP",
                                       **self.enterprise.kms("KmsKeyId")},
                     ResourceConfig={"InstanceType": request.instance_type, "InstanceCount": self.instance_count,
                                     "VolumeSizeInGB": int(model.document.get("TrainingVolumeSize") or 30),
                                     **self.enterprise.kms("VolumeKmsKeyId")},
                     **self._spot(request), **self.enterprise.vpc(),
                     EnableNetworkIsolation=model.flag("TrainingEnableNetworkIsolation"),
                     Environment=model.training_environment(request.instance_type),
                     Tags=[{"Key": "sagemaker-sdk:jumpstart-model-id", "Value": model.model_id},
                           {"Key": "sagemaker-sdk:jumpstart-model-version", "Value": model.version},
                           {"Key": "pvbuild:base-model", "Value": base.name}, *self.enterprise.tags])
        say(f"train: created SageMaker job {request.job_name} ({model.model_id} {model.version}, "
            f"{request.instance_type}{', managed spot' if self.spot else ''}); it bills until it ends")
        return JobState(name=request.job_name, status=RUNNING, arn=str(reply.get("TrainingJobArn", "")))

    def wait(self, request: TrainingRequest, on_update: Callable[[JobState], None]) -> JobState:
        while True:
            state = self.describe(request.job_name)
            if state is None:
                raise SageMakerError(f"training job {request.job_name} disappeared from SageMaker")
            on_update(state)
            if state.status in ENDED:
                return state
            time.sleep(self.poll_seconds)


class SageMakerEndpoints:
    """A SageMaker model + endpoint config + endpoint per packed model, on the JumpStart inference image."""

    def __init__(self, aws: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.aws = aws
        self.client = aws_client("sagemaker", aws)
        self.poll_seconds = float(options["poll_seconds"])
        self.timeout = float(options["startup_timeout"])
        self.instance_count = int(options.get("instance_count", 1))
        self.enterprise = Enterprise.of(aws)
        self._runtime: Any = None

    def _create_model(self, name: str, request: DeployRequest) -> None:
        if lookup(f"DescribeModel {name}", self.client.describe_model, ModelName=name):
            return
        base, model, instance_type = request.base_model, request.model, request.instance_type
        jumpstart = JumpStartModel.describe(self.client, base.jumpstart_model_id, base.jumpstart_model_version)
        call(f"CreateModel {name}", self.client.create_model, ModelName=name,
             ExecutionRoleArn=str(self.aws["role_arn"]),
             PrimaryContainer={
                 "Image": jumpstart.image("Hosting", instance_type),
                 "Environment": jumpstart.hosting_environment(instance_type),
                 "ModelDataSource": {"S3DataSource": {
                     "S3Uri": str(model["uri"]), "S3DataType": "S3Object", "CompressionType": "Gzip",
                     "ModelAccessConfig": {"AcceptEula": request.accept_eula}}}},
             EnableNetworkIsolation=jumpstart.flag("InferenceEnableNetworkIsolation"), **self.enterprise.vpc(),
             Tags=[{"Key": "pvbuild:model-sha256", "Value": str(model["sha256"])}, *self.enterprise.tags])

    def _create_config(self, name: str, instance_type: str) -> None:
        if lookup(f"DescribeEndpointConfig {name}", self.client.describe_endpoint_config, EndpointConfigName=name):
            return
        call(f"CreateEndpointConfig {name}", self.client.create_endpoint_config, EndpointConfigName=name,
             ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name,
                                  "InitialInstanceCount": self.instance_count, "InstanceType": instance_type}],
             **self.enterprise.kms("KmsKeyId"), Tags=list(self.enterprise.tags))

    def _wait_in_service(self, name: str) -> dict[str, Any]:
        started = time.monotonic()
        last = ""
        while True:
            reply = call(f"DescribeEndpoint {name}", self.client.describe_endpoint, EndpointName=name)
            status = str(reply["EndpointStatus"])
            if status != last:
                say(f"deploy: endpoint {name} {status}, {time.monotonic() - started:.0f}s elapsed")
                last = status
            if status == IN_SERVICE:
                return dict(reply)
            if status in ("Failed", "OutOfService", "Deleting"):
                raise EndpointError(f"endpoint {name} is {status}: {reply.get('FailureReason') or 'no reason given'}")
            if time.monotonic() - started > self.timeout:
                raise EndpointError(f"endpoint {name} not InService after {self.timeout:.0f}s "
                                    "(endpoint.startup_timeout); it may still come up: run doit again to wait")
            time.sleep(self.poll_seconds)

    def deploy(self, request: DeployRequest, started: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        name, model, previous, instance_type = request.name, request.model, request.previous, request.instance_type
        allowed = request.base_model.inference_instance_types
        if instance_type not in allowed:
            raise EndpointError(f"{request.where}: endpoint.instance_type {instance_type!r} is not "
                                f"allowed for {request.base_model.name}; allowed: {', '.join(allowed)}")
        resource = f"{name}-{str(model['sha256'])[:8]}"  # model and config: one per packed model
        self._create_model(resource, request)
        self._create_config(resource, instance_type)
        current = lookup(f"DescribeEndpoint {name}", self.client.describe_endpoint, EndpointName=name)
        if current is None:
            call(f"CreateEndpoint {name}", self.client.create_endpoint, EndpointName=name,
                 EndpointConfigName=resource, Tags=list(self.enterprise.tags))
            say(f"deploy: creating endpoint {name} on {instance_type}; it bills while it runs (pvbuild teardown)")
        elif current.get("EndpointConfigName") != resource:
            call(f"UpdateEndpoint {name}", self.client.update_endpoint, EndpointName=name,
                 EndpointConfigName=resource)
            say(f"deploy: updating endpoint {name} to {resource}")
        started({"backend": "sagemaker", "endpoint_name": name, "model_name": resource,
                 "endpoint_config_name": resource, "instance_type": instance_type, "model_sha256": model["sha256"],
                 "model_uri": model["uri"], "status": CREATING})
        reply = self._wait_in_service(name)
        if previous and previous.get("endpoint_name") != name:
            self.delete(previous)
        elif current is not None and current.get("EndpointConfigName") not in (None, resource):
            self._delete_config_and_model(str(current["EndpointConfigName"]))
        return {"backend": "sagemaker", "endpoint_name": name, "arn": reply.get("EndpointArn"),
                "model_name": resource, "endpoint_config_name": resource, "instance_type": instance_type,
                "model_sha256": model["sha256"], "model_uri": model["uri"], "status": IN_SERVICE,
                "creation_time": str(reply.get("CreationTime", ""))}

    def problem(self, record: Mapping[str, Any]) -> str | None:
        name = str(record.get("endpoint_name"))
        try:
            reply = lookup(f"DescribeEndpoint {name}", self.client.describe_endpoint, EndpointName=name)
        except SageMakerError as error:
            return str(error)
        if reply is None:
            return f"endpoint {name} does not exist at SageMaker any more"
        if reply.get("EndpointStatus") != IN_SERVICE:
            return f"endpoint {name} is {reply.get('EndpointStatus')} at SageMaker"
        if reply.get("EndpointConfigName") != record.get("endpoint_config_name"):
            return (f"endpoint {name} serves config {reply.get('EndpointConfigName')}, "
                    f"not the recorded {record.get('endpoint_config_name')}")
        return None

    def idle(self, record: Mapping[str, Any], hours: float) -> bool:
        """No ``Invocations`` in CloudWatch (namespace AWS/SageMaker) over the last ``hours``, for an
        endpoint older than that. SageMaker has no idle shutdown of its own for a real-time endpoint."""
        import datetime

        name = str(record.get("endpoint_name"))
        reply = lookup(f"DescribeEndpoint {name}", self.client.describe_endpoint, EndpointName=name)
        if reply is None:
            return False
        now = datetime.datetime.now(datetime.UTC)
        window = datetime.timedelta(hours=hours)
        if now - reply["CreationTime"] < window:
            return False
        seconds = max(60, int(window.total_seconds()) // 60 * 60)  # CloudWatch periods are whole minutes
        cloudwatch = aws_client("cloudwatch", self.aws)
        metrics = call(f"GetMetricStatistics Invocations {name}", cloudwatch.get_metric_statistics,
                       Namespace="AWS/SageMaker", MetricName="Invocations", StartTime=now - window, EndTime=now,
                       Period=seconds, Statistics=["Sum"], Dimensions=[
                           {"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "AllTraffic"}])
        return sum(float(point.get("Sum", 0)) for point in metrics.get("Datapoints") or []) == 0

    def invoke(self, record: Mapping[str, Any], payload: Mapping[str, Any]) -> Any:
        if self._runtime is None:
            self._runtime = aws_client("sagemaker-runtime", self.aws)
        name = str(record["endpoint_name"])
        try:
            reply = call(f"InvokeEndpoint {name}", self._runtime.invoke_endpoint, EndpointName=name,
                         ContentType="application/json", Accept="application/json",
                         Body=json.dumps(payload, ensure_ascii=False).encode("utf-8"))
        except SageMakerError as error:
            raise EndpointError(str(error)) from error
        body = reply["Body"].read()
        try:
            return json.loads(body)
        except json.JSONDecodeError as error:
            raise EndpointError(f"endpoint {name} answered with non-JSON: {body[:300]!r}") from error

    def _delete_config_and_model(self, resource: str) -> None:
        for what, method, key in (("DeleteEndpointConfig", self.client.delete_endpoint_config, "EndpointConfigName"),
                                  ("DeleteModel", self.client.delete_model, "ModelName")):
            lookup(f"{what} {resource}", method, **{key: resource})  # already gone is what we wanted

    def delete(self, record: Mapping[str, Any]) -> dict[str, Any]:
        name = str(record["endpoint_name"])
        lookup(f"DeleteEndpoint {name}", self.client.delete_endpoint, EndpointName=name)
        self._delete_config_and_model(str(record.get("endpoint_config_name") or record.get("model_name")))
        say(f"deleted endpoint {name}, its config and model")
        return {**record, "status": DELETED}
