"""The cloud half against moto's server on 127.0.0.1 (+ the documented shim): S3, JumpStart training, endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvbuild.cli import main
from pvbuild.config import load_config
from pvbuild.engine import staleness
from pvbuild.engine.stage import StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import ConfigError
from pvbuild.stages.asking import Asker
from pvbuild.stages.catalog import stage_named
from tests.aws import FAKE_CREDENTIALS, fake_credentials
from tests.conftest import Project
from tests.sagemaker_shim import HUB, SageMakerShim, model_files, serve_with_shim

MODEL_ID = "meta-textgeneration-llama-3-2-1b-instruct"
CONFIG = """
[profile.test]
artifacts = "artifacts/test"
[profile.test.storage]
backend = "s3"
bucket = "pv-cloud"
[profile.test.aws]
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/pvbuild-sagemaker"
endpoint_url = "{moto}"
[profile.test.training]
backend = "sagemaker"
base_model = "llama-3.2-1b-instruct"
instance_type = "ml.g5.xlarge"
accept_eula = true
poll_seconds = 0.01
[profile.test.endpoint]
backend = "sagemaker"
instance_type = "ml.g5.xlarge"
poll_seconds = 0.01
[profile.test.ask]
tokenizer = "{tokenizer}"
{extra}
"""


def stale(workspace: Workspace, stage: str) -> list[StaleItem]:
    return staleness.stale(workspace, stage_named(stage))


class Cloud:
    """A project wired to moto + shim, and the boto3 clients to look behind pvbuild's back."""

    def __init__(self, project: Project, url: str, shim: SageMakerShim, tokenizer: Path) -> None:
        import boto3

        self.project, self.url, self.shim, self.tokenizer = project, url, shim, tokenizer
        session = boto3.session.Session()
        self.s3 = session.client("s3", endpoint_url=url, region_name="us-east-1")
        self.sagemaker = session.client("sagemaker", endpoint_url=url, region_name="us-east-1")
        self.configure()

    def configure(self, extra: str = "") -> None:
        self.project.config(CONFIG.format(moto=self.url, tokenizer=self.tokenizer, extra=extra))

    def build(self) -> int:
        return self.project.build_all()

    def record(self, name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.project.artifacts() / name).read_text(encoding="utf-8"))
        return loaded

    def pipeline(self) -> Workspace:
        return Workspace(load_config(self.project.path, "test"))

    def endpoints(self) -> list[str]:
        return sorted(e["EndpointName"] for e in self.sagemaker.list_endpoints()["Endpoints"])

    def teardown(self) -> int:
        return main(["--project", str(self.project.path), "teardown", "--profile", "test"])


@pytest.fixture
def cloud(project: Project, tiny_base: Path) -> Iterator[Cloud]:
    with fake_credentials(), serve_with_shim() as (url, shim):
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).read()
        running = Cloud(project, url, shim, tiny_base)
        running.s3.create_bucket(Bucket="pv-cloud")
        yield running


def test_first_run_creates_one_job_and_one_endpoint_then_nothing(cloud: Cloud) -> None:
    assert cloud.build() == 0
    assert cloud.shim.created == {"CreateTrainingJob": 1, "CreateModel": 1, "CreateEndpointConfig": 1,
                                  "CreateEndpoint": 1}
    training, model, endpoint = (cloud.record(n) for n in ("training.json", "model.json", "endpoint.json"))
    job = cloud.shim.requests["CreateTrainingJob"][0]
    assert training["status"] == "Completed" and training["job_name"] == job["TrainingJobName"]
    assert training["arn"].endswith(f"training-job/{training['job_name']}") and training["billable_seconds"] == 431
    # JumpStart's metric names, as the local trainer names them: the report reads one set of names
    assert training["metrics"] == {"train_loss": 1.25, "validation_loss": 1.5} and training["failure_reason"] == ""
    assert training["base_model"]["jumpstart_model_id"] == MODEL_ID
    report = (cloud.project.artifacts() / "report" / "report.html").read_text(encoding="utf-8")
    assert "final training loss" in report and "1.25" in report and "1.5" in report, "the production report has losses"

    assert job["AlgorithmSpecification"]["TrainingImage"] == HUB[MODEL_ID]["TrainingEcrUri"]
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge" and job["EnableNetworkIsolation"] is True
    assert job["HyperParameters"]["instruction_tuned"] == "True" and job["HyperParameters"]["chat_dataset"] == "False"
    assert job["HyperParameters"]["epoch"] == "5" and job["HyperParameters"]["max_input_length"] == "1024"
    assert job["HyperParameters"]["sagemaker_submit_directory"] == HUB[MODEL_ID]["TrainingScriptUri"]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in job["InputDataConfig"]}
    assert channels["training"]["S3Uri"] == cloud.record("upload.json")["channels"]["training"]
    assert channels["validation"]["S3Uri"].startswith("s3://pv-cloud/llm-fine-tuning/train-data/")
    assert channels["model"]["ModelAccessConfig"] == {"AcceptEula": True}
    assert channels["model"]["S3Uri"].startswith("s3://jumpstart-private-cache-prod-us-east-1/")
    assert job["OutputDataConfig"] == {"S3OutputPath": "s3://pv-cloud/llm-fine-tuning/output",
                                       "CompressionType": "NONE"}  # the hub document disables compression

    assert model["uri"] == f"s3://pv-cloud/llm-fine-tuning/output/{training['job_name']}/output/model.tar.gz"
    archive = cloud.project.path / "model.tar.gz"
    cloud.s3.download_file("pv-cloud", model["uri"].split("/", 3)[3], str(archive))
    with tarfile.open(archive) as tar:
        packed = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert packed == model_files(training["job_name"])

    created_model = cloud.shim.requests["CreateModel"][0]
    assert created_model["PrimaryContainer"]["Image"].endswith("djl-inference:0.31.0-lmi13")  # g5 variant alias
    assert created_model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] == model["uri"]
    assert endpoint["endpoint_name"] == training["job_name"] and endpoint["status"] == "InService"
    assert endpoint["instance_type"] == "ml.g5.xlarge" and cloud.endpoints() == [endpoint["endpoint_name"]]
    config = cloud.sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["endpoint_config_name"])
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g5.xlarge"

    assert cloud.build() == 0  # nothing changed: nothing created
    assert sum(cloud.shim.created.values()) == 4 and cloud.record("endpoint.json") == endpoint
    assert main(["--project", str(cloud.project.path), "check", "--profile", "test", "--remote"]) == 0
    secrets = [FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"].encode(), FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode()]
    leaked = [path for path in cloud.project.path.rglob("*") if path.is_file()
              and any(secret in path.read_bytes() for secret in secrets)]
    assert leaked == []  # no record, artifact, log or doit DB holds a credential


def test_ask_sends_the_payload_and_prints_the_configured_answer(cloud: Cloud) -> None:
    assert cloud.build() == 0
    answer = {"generated_text": "分布式光伏项目需向电网企业申请备案。"}
    results = {"results": [{"Body": json.dumps(answer, ensure_ascii=False), "ContentType": "application/json"}]}
    request = urllib.request.Request(f"{cloud.url}/moto-api/static/sagemaker/endpoint-results",
                                     data=json.dumps(results).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).read()

    assert Asker(cloud.pipeline()).ask("绿证怎么交易？") == answer["generated_text"]
    sent = cloud.shim.invocations[-1]
    assert sent["endpoint"] == cloud.record("endpoint.json")["endpoint_name"]
    assert sent["content_type"] == "application/json"
    assert sent["body"]["inputs"].endswith("绿证怎么交易？<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "你是一位光伏行业专家" in sent["body"]["inputs"]
    assert sent["body"]["parameters"] == {"max_new_tokens": 48, "top_p": 0.9, "temperature": 0.6,
                                          "repetition_penalty": 1.1, "stop": ["<|eot_id|>", "<|end_of_text|>"]}


def test_teardown_removes_endpoint_config_and_model(cloud: Cloud) -> None:
    assert cloud.build() == 0
    endpoint = cloud.record("endpoint.json")
    assert cloud.teardown() == 0
    assert cloud.endpoints() == [] and cloud.sagemaker.list_models()["Models"] == []
    assert cloud.sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert cloud.record("endpoint.json") == {**endpoint, "status": "Deleted"}
    with pytest.raises(Exception, match="Deleted"):
        Asker(cloud.pipeline())
    assert main(["--project", str(cloud.project.path), "check", "--profile", "test", "--remote"]) == 1
    assert cloud.build() == 0 and cloud.shim.created["CreateEndpoint"] == 2  # doit deploys it again
    assert cloud.shim.created["CreateTrainingJob"] == 1 and cloud.teardown() == 0


def test_a_deleted_object_is_uploaded_again_and_changed_data_trains_one_new_job(cloud: Cloud) -> None:
    assert cloud.build() == 0
    old = cloud.record("endpoint.json")
    victim = cloud.record("upload.json")["objects"][0]["uri"].split("/", 3)[3]
    cloud.s3.delete_object(Bucket="pv-cloud", Key=victim)
    assert cloud.build() == 0
    assert cloud.s3.head_object(Bucket="pv-cloud", Key=victim)["ContentLength"] > 0
    assert cloud.shim.created["CreateTrainingJob"] == 1

    cloud.configure("[profile.test.dataset]\nvalidation_ratio = 0.3\n")  # a different dataset
    assert cloud.build() == 0
    new = cloud.record("endpoint.json")
    assert cloud.shim.created["CreateTrainingJob"] == 2 and cloud.shim.created["CreateEndpoint"] == 2
    assert new["endpoint_name"] == cloud.record("training.json")["job_name"] != old["endpoint_name"]
    assert cloud.endpoints() == [new["endpoint_name"]]  # the old endpoint went once the new one served
    assert [m["ModelName"] for m in cloud.sagemaker.list_models()["Models"]] == [new["model_name"]]


def test_a_new_model_of_the_same_job_updates_its_endpoint(cloud: Cloud) -> None:
    assert cloud.build() == 0
    old = cloud.record("endpoint.json")
    output = cloud.record("training.json")["model_artifacts"].split("/", 3)[3]
    cloud.s3.put_object(Bucket="pv-cloud", Key=f"{output}generation_config.json", Body=b"{}")
    (cloud.project.artifacts() / "model.json").unlink()  # packed again: the archive now differs
    assert cloud.build() == 0
    new = cloud.record("endpoint.json")
    assert new["endpoint_name"] == old["endpoint_name"] and new["model_sha256"] != old["model_sha256"]
    assert cloud.shim.created["UpdateEndpoint"] == 1 and cloud.shim.created["CreateTrainingJob"] == 1
    assert cloud.endpoints() == [old["endpoint_name"]]
    assert [m["ModelName"] for m in cloud.sagemaker.list_models()["Models"]] == [new["model_name"]]
    assert cloud.pipeline().endpoint_backend().problem(new) is None


def test_a_failed_job_stops_the_chain_with_its_reason_and_the_rerun_starts_one_new_job(
        cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    cloud.shim.outcomes.append("fail:AlgorithmError: CUDA out of memory")
    assert cloud.build() != 0
    failed = cloud.record("training.json")
    assert failed["status"] == "Failed" and failed["failure_reason"] == "AlgorithmError: CUDA out of memory"
    assert "Failed (AlgorithmError: CUDA out of memory)" in capsys.readouterr().err
    assert "CUDA out of memory" in stale(cloud.pipeline(), "train")[0].reason
    assert not (cloud.project.artifacts() / "model.json").exists()
    assert "CreateModel" not in cloud.shim.created and "CreateEndpoint" not in cloud.shim.created

    assert cloud.build() == 0
    done = cloud.record("training.json")
    assert cloud.shim.created["CreateTrainingJob"] == 2 and done["job_name"].endswith("-2")
    assert done["status"] == "Completed" and done["input_digest"] == failed["input_digest"]


def test_an_interrupted_wait_re_attaches_to_the_running_job(cloud: Cloud) -> None:
    cloud.shim.outcomes.append("hold")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-m", "pvbuild", "--project", str(cloud.project.path), "build", "--profile", "test",
               "report"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record = cloud.project.artifacts() / "training.json"
    deadline = time.monotonic() + 120
    while not record.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # Ctrl-C while waiting for the job
    process.communicate(timeout=60)
    waiting = cloud.record("training.json")
    assert waiting["status"] == "InProgress" and cloud.shim.created["CreateTrainingJob"] == 1

    cloud.shim.release(waiting["job_name"])
    assert cloud.build() == 0
    done = cloud.record("training.json")
    assert done["job_name"] == waiting["job_name"] and done["status"] == "Completed"
    assert cloud.shim.created["CreateTrainingJob"] == 1 and cloud.shim.created["CreateEndpoint"] == 1


@pytest.mark.parametrize(("aws", "message"), [
    ('region = "us-east-1"\npartition = "aws-cn"', "aws.region: 'us-east-1' is in partition 'aws'"),
    ('region = "cn-north-1"\npartition = "aws-cn"\nrole_arn = "arn:aws:iam::1:role/x"', "partition 'aws-cn'"),
    ('partition = "aws-moon"', "aws.partition: must be one of"),
])
def test_the_partition_agrees_with_region_and_role(project: Project, aws: str, message: str) -> None:
    project.config(f"[profile.test]\n[profile.test.aws]\n{aws}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(project.path, "test")


def test_the_china_partition_is_accepted(project: Project) -> None:
    project.config('[profile.test]\n[profile.test.aws]\nregion = "cn-northwest-1"\npartition = "aws-cn"\n'
                   'role_arn = "arn:aws-cn:iam::123456789012:role/pvbuild"\n')
    assert load_config(project.path, "test").aws["partition"] == "aws-cn"


def test_a_spot_job_interrupted_once_resumes_and_is_recorded_once(cloud: Cloud,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = (cloud.project.path / "pvbuild.toml").read_text(encoding="utf-8")
    (cloud.project.path / "pvbuild.toml").write_text(
        config.replace("poll_seconds = 0.01\n[profile.test.endpoint]", "poll_seconds = 0.01\nspot = true\n"
                       "max_runtime_seconds = 3600\n[profile.test.endpoint]", 1), encoding="utf-8")
    cloud.shim.outcomes.append("spot-interrupted")
    assert cloud.build() == 0
    assert cloud.shim.created["CreateTrainingJob"] == 1, "resumed, not created again"
    job = cloud.shim.requests["CreateTrainingJob"][0]
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"] == {
        "S3Uri": f"s3://pv-cloud/llm-fine-tuning/output/{job['TrainingJobName']}/checkpoints/",
        "LocalPath": "/opt/ml/checkpoints"}
    training = cloud.record("training.json")
    assert training["billable_seconds"] == 300 and training["training_seconds"] == 1000
    assert training["metrics"]["spot_saving"] == 0.7
    assert "InProgress / Interrupted" in capsys.readouterr().err, "the interruption is shown"
    report = (cloud.project.artifacts() / "report" / "report.html").read_text(encoding="utf-8")
    assert "300 of 1,000 trained (managed spot saved 70%)" in report


def test_teardown_idle_deletes_an_unused_endpoint_and_leaves_a_busy_one(cloud: Cloud,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import datetime

    import boto3

    config = (cloud.project.path / "pvbuild.toml").read_text(encoding="utf-8")
    (cloud.project.path / "pvbuild.toml").write_text(config.replace(
        '[profile.test.endpoint]\nbackend = "sagemaker"\n', '[profile.test.endpoint]\nbackend = "sagemaker"\n'
        "idle_hours = 0.002\n", 1), encoding="utf-8")  # 7.2 s
    assert cloud.build() == 0
    name = cloud.record("endpoint.json")["endpoint_name"]
    time.sleep(7.5)  # older than idle_hours: only its traffic decides
    cloudwatch = boto3.session.Session().client("cloudwatch", endpoint_url=cloud.url, region_name="us-east-1")
    cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=[{  # as SageMaker reports a request
        # a second ago: moto compares timestamps to the query's end time in whole seconds
        "MetricName": "Invocations", "Value": 3, "Timestamp": datetime.datetime.now(datetime.UTC)
        - datetime.timedelta(seconds=1),
        "Dimensions": [{"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "AllTraffic"}]}])
    capsys.readouterr()
    assert main(["--project", str(cloud.project.path), "teardown", "--profile", "test", "--idle"]) == 0
    assert "served requests within 0.002 h: left in service" in capsys.readouterr().out
    assert cloud.endpoints() == [name]
    time.sleep(7.5)  # and then nothing
    assert main(["--project", str(cloud.project.path), "teardown", "--profile", "test", "--idle"]) == 0
    assert f"endpoint {name} torn down" in capsys.readouterr().out
    assert cloud.endpoints() == [] and cloud.record("endpoint.json")["status"] == "Deleted"


def test_two_candidates_run_as_two_concurrent_jobs_and_the_leaderboard_ranks_them(
        cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    cloud.configure('[[profile.test.training.candidates]]\nname = "default-rate"\n'
                    '[[profile.test.training.candidates]]\nname = "high-rate"\n'
                    'hyperparameters = { learning_rate = 0.001 }\n')
    cloud.shim.steps = 3  # both jobs are created before either is waited for
    assert cloud.build() == 0
    assert cloud.shim.created["CreateTrainingJob"] == 2 and cloud.shim.created["CreateEndpoint"] == 1
    created = [request["TrainingJobName"] for request in cloud.shim.requests["CreateTrainingJob"]]
    records = {name: cloud.record(f"candidates/{name}/training.json") for name in ("default-rate", "high-rate")}
    assert sorted(created) == sorted(record["job_name"] for record in records.values())
    assert records["default-rate"]["metrics"] == {"train_loss": 1.25, "validation_loss": 1.5}
    assert records["high-rate"]["metrics"] == {"train_loss": 1.25, "validation_loss": 1.6}
    capsys.readouterr()
    assert main(["--project", str(cloud.project.path), "leaderboard", "--profile", "test", "--json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert [(row["name"], row["selected"], row["billable_seconds"]) for row in board] == [
        ("default-rate", True, 431), ("high-rate", False, 431)]
    assert cloud.record("endpoint.json")["endpoint_name"] == records["default-rate"]["job_name"]
    report = (cloud.project.artifacts() / "report" / "report.html").read_text(encoding="utf-8")
    assert "Leaderboard" in report and "high-rate" in report and "1.6" in report
    assert "training cost (ml.g5.xlarge, list prices of" in report and "$0.17" in report  # 431 s at $1.408/h
    assert cloud.build() == 0 and cloud.shim.created["CreateTrainingJob"] == 2  # nothing new


def test_the_70b_qlora_and_405b_fp8_requests_carry_the_guides_settings(cloud: Cloud) -> None:
    cloud.configure('[profile.test.dataset]\nformat = "chat"\n'
                    '[[profile.test.training.candidates]]\nname = "seventy"\nbase_model = "llama-3.1-70b-instruct"\n'
                    'instance_type = "ml.g5.48xlarge"\n'
                    '[[profile.test.training.candidates]]\nname = "four-oh-five"\n'
                    'base_model = "llama-3.1-405b-instruct-fp8"\ninstance_type = "ml.p5.48xlarge"\n')
    assert cloud.project.build("train") == 0
    jobs = {request["ResourceConfig"]["InstanceType"]: request
            for request in cloud.shim.requests["CreateTrainingJob"]}
    assert sorted(jobs) == ["ml.g5.48xlarge", "ml.p5.48xlarge"]
    seventy, four_oh_five = jobs["ml.g5.48xlarge"]["HyperParameters"], jobs["ml.p5.48xlarge"]["HyperParameters"]
    assert (seventy["int8_quantization"], seventy["max_input_length"], seventy["per_device_train_batch_size"]) == (
        "True", "2000", "8")  # 8-bit QLoRA, 2,000 tokens, batch 8
    assert (four_oh_five["int8_quantization"], four_oh_five["max_input_length"],
            four_oh_five["per_device_train_batch_size"]) == ("False", "8000", "8")  # QLoRA over FP8 weights
    assert seventy["chat_dataset"] == four_oh_five["chat_dataset"] == "True"  # 3.1 instruct: the dialog format
    model_channels = {instance: next(c for c in request["InputDataConfig"] if c["ChannelName"] == "model")
                      for instance, request in jobs.items()}
    assert model_channels["ml.p5.48xlarge"]["DataSource"]["S3DataSource"]["S3Uri"].endswith(
        "/p5/llama-3-1-405b-instruct-fp8.tar.gz")
    assert cloud.record("candidates/seventy/training.json")["status"] == "Completed"


def test_a_405b_candidate_on_a_g5_is_refused_before_anything_runs(cloud: Cloud) -> None:
    cloud.configure('[profile.test.dataset]\nformat = "chat"\n[[profile.test.training.candidates]]\n'
                    'name = "big"\nbase_model = "llama-3.1-405b-instruct-fp8"\ninstance_type = "ml.g5.48xlarge"\n')
    assert cloud.project.build("train") != 0
    assert "CreateTrainingJob" not in cloud.shim.created


def test_instance_counts_vpc_kms_and_tags_reach_the_job_and_the_endpoint(cloud: Cloud) -> None:
    kms = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    text = CONFIG.format(moto=cloud.url, tokenizer=cloud.tokenizer, extra="").replace(
        "[profile.test.aws]\n", f'[profile.test.aws]\nkms = "{kms}"\nsubnets = ["subnet-0a1b"]\n'
        'security_group_ids = ["sg-9f8e"]\ntags = { team = "pv", cost-center = "42" }\n').replace(
        "[profile.test.training]\n", "[profile.test.training]\ninstance_count = 2\n").replace(
        "[profile.test.endpoint]\n", "[profile.test.endpoint]\ninstance_count = 2\n")
    cloud.project.config(text)
    assert cloud.build() == 0
    job = cloud.shim.requests["CreateTrainingJob"][0]
    assert job["ResourceConfig"]["InstanceCount"] == 2 and job["ResourceConfig"]["VolumeKmsKeyId"] == kms
    assert job["OutputDataConfig"]["KmsKeyId"] == kms
    assert job["VpcConfig"] == {"Subnets": ["subnet-0a1b"], "SecurityGroupIds": ["sg-9f8e"]}
    assert {"Key": "team", "Value": "pv"} in job["Tags"] and {"Key": "cost-center", "Value": "42"} in job["Tags"]
    model = cloud.shim.requests["CreateModel"][0]
    assert model["VpcConfig"]["Subnets"] == ["subnet-0a1b"] and {"Key": "team", "Value": "pv"} in model["Tags"]
    config = cloud.shim.requests["CreateEndpointConfig"][0]
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2 and config["KmsKeyId"] == kms
    assert {"Key": "team", "Value": "pv"} in cloud.shim.requests["CreateEndpoint"][0]["Tags"]


@pytest.mark.parametrize(("aws", "message"), [
    ('subnets = ["vpc-1"]\nsecurity_group_ids = ["sg-1"]\n', "expected ids starting with 'subnet-'"),
    ('subnets = ["subnet-1"]\n', "needs both subnets and security_group_ids"),
    ('tags = { "aws:created-by" = "me" }\n', "may not start with 'aws:'"),
    ('kms = "arn:aws-cn:kms:cn-north-1:1:key/x"\n', "a KMS key ARN of partition 'aws'"),
])
def test_enterprise_settings_are_checked(project: Project, aws: str, message: str) -> None:
    project.config(f"[profile.test]\n[profile.test.aws]\n{aws}")
    with pytest.raises(ConfigError, match=message):
        load_config(project.path, "test")


def test_plan_prices_the_job_and_the_endpoint_before_anything_is_spent(
        cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--project", str(cloud.project.path), "plan", "--profile", "test"]) == 0
    out = capsys.readouterr().out
    assert "training: 1 x ml.g5.xlarge at $1.41/h while the job runs" in out
    assert "endpoint: 1 x ml.g5.xlarge at $1.41/h for as long as it stays up" in out
    assert sum(cloud.shim.created.values()) == 0  # planning created nothing
