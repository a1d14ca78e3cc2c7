"""A small WSGI shim in front of moto's server for what moto 5.x lacks. Tests only; pvbuild knows nothing of it.

moto has no JumpStart hub API, refuses g5 instance types in endpoint configs, marks a training job
Completed at once without writing any output, and answers ``InvokeEndpoint`` for endpoints that do
not exist. The shim sits on the same 127.0.0.1 socket as moto, so pvbuild's boto3 calls are real
HTTP calls, and fills those gaps:

- ``DescribeHubContent`` on ``SageMakerPublicHub`` answers from ``HUB`` (one document per model id,
  shaped like the real hub's, with per-family variants and ``$alias`` image URIs).
- ``ml.g5.*`` becomes ``ml.g4dn.*`` in requests to moto and ``ml.g5.*`` again in its replies.
- A training job is ``InProgress`` (Starting → Downloading → Training → Uploading) for ``steps``
  polls of ``DescribeTrainingJob``, then ends as the next entry of ``outcomes`` says:
  ``"complete"`` (the default) writes model files under ``<S3OutputPath>/<job>/output/model/`` in
  moto's S3 and reports that prefix, billable seconds and final metrics; ``"fail:<reason>"`` reports
  ``Failed`` with that reason; ``"hold"`` stays ``InProgress`` until ``release(job)``;
  ``"spot-interrupted"`` passes through ``Interrupted`` once, then completes billed for 300 of 1,000 s.
- An endpoint is ``Creating`` for ``steps`` polls of ``DescribeEndpoint`` after it is created.
- ``UpdateEndpoint`` (moto has none) replaces moto's endpoint with one on the new config (through
  moto's own API, so that replacement also counts as a ``CreateEndpoint``).
- ``InvokeEndpoint`` bodies are kept in ``invocations``; an unknown endpoint gets a 400. Answers come
  from moto's own queue (``/moto-api/static/sagemaker/endpoint-results``); where moto would send its
  placeholder ``body``, the shim sends ``DEFAULT_ANSWER`` (JSON, like a JumpStart LLM endpoint).

``created`` counts the Create* calls per action and ``requests`` keeps their bodies for assertions.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

HUB = {
    "meta-textgeneration-llama-3-2-1b-instruct": {
        "HostingEcrUri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.31.0-lmi13.0.0-cu124",
        "HostingInstanceTypeVariants": {
            "Aliases": {"gpu_ecr_uri_1": "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.31.0-lmi13"},
            "Variants": {"g5": {"Properties": {"ImageUri": "$gpu_ecr_uri_1",
                                               "EnvironmentVariables": {"OPTION_TENSOR_PARALLEL_DEGREE": "1"}}}}},
        "InferenceEnvironmentVariables": [{"Name": "SAGEMAKER_PROGRAM", "Default": "inference.py"},
                                          {"Name": "HF_MODEL_ID", "Default": "/opt/ml/model"}],
        "InferenceEnableNetworkIsolation": True,
        "TrainingSupported": True,
        "TrainingEcrUri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.0.0-gpu",
        "TrainingArtifactUri": "s3://jumpstart-cache-prod-us-east-1/meta-training/train-llama-3-2-1b.tar.gz",
        "TrainingScriptUri": "s3://jumpstart-cache-prod-us-east-1/source-directory-tarballs/meta/transfer_learning/"
                             "textgeneration/v1.0.0/sourcedir.tar.gz",
        "TrainingInstanceTypeVariants": {"Variants": {"g5": {"Properties": {
            "GatedModelEnvVarUri": "s3://jumpstart-private-cache-prod-us-east-1/meta-training/g5/llama-3-2-1b.tar.gz",
            "EnvironmentVariables": {"SM_USE_GATED_MODEL": "1"}}}}},
        "TrainingEnableNetworkIsolation": True,
        "DisableOutputCompression": True,
        "TrainingVolumeSize": 256,
        "TrainingMetrics": [{"Name": "huggingface-textgeneration:train-loss", "Regex": "train_epoch_loss=([0-9\\.]+)"}],
    },
}


def _larger(model: str, families: tuple[str, ...]) -> dict[str, Any]:
    """The 1B document's shape for a larger Llama 3.1: its own weights per instance family (g5, p4d, p5)."""
    document = json.loads(json.dumps(HUB["meta-textgeneration-llama-3-2-1b-instruct"]))
    document["TrainingArtifactUri"] = f"s3://jumpstart-cache-prod-us-east-1/meta-training/train-{model}.tar.gz"
    document["TrainingInstanceTypeVariants"] = {"Variants": {family: {"Properties": {
        "GatedModelEnvVarUri": f"s3://jumpstart-private-cache-prod-us-east-1/meta-training/{family}/{model}.tar.gz",
        "EnvironmentVariables": {"SM_USE_GATED_MODEL": "1"}}} for family in families}}
    document["HostingInstanceTypeVariants"]["Variants"] = {
        family: document["HostingInstanceTypeVariants"]["Variants"]["g5"] for family in families}
    return document


HUB["meta-textgeneration-llama-3-1-70b-instruct"] = _larger("llama-3-1-70b-instruct", ("g5", "p4d"))
HUB["meta-textgeneration-llama-3-1-405b-instruct-fp8"] = _larger("llama-3-1-405b-instruct-fp8", ("p5",))


def model_files(job: str) -> dict[str, bytes]:
    """What a job "trained": different jobs leave different weights, as real ones do."""
    return {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b'{"version": "1.0"}',
            "model.safetensors": job.encode() + bytes(range(256)) * 64}

DEFAULT_ANSWER = [{"generated_text": "（moto 端点的默认回答）"}]
PHASES = ("Starting", "Downloading", "Training", "Uploading")
# A managed spot job that loses its instance once and resumes from its checkpoint.
SPOT_INTERRUPTED = ("Starting", "Downloading", "Training", "Interrupted", "Starting", "Training", "Uploading")


def _eval_loss(hyperparameters: dict[str, str]) -> float:
    """A job's validation loss: 1.5 at JumpStart's default learning rate (1e-4), higher the further the
    job's rate is from it (a tenth per decade), so training candidates of different rates rank."""
    rate = float(hyperparameters.get("learning_rate", "0.0001"))
    return round(1.5 + abs(math.log10(rate) + 4) / 10, 4)


@dataclass
class SageMakerShim:
    """The middleware; ``app`` is moto's WSGI application, ``url`` the server's own address."""

    app: WSGIApp
    url: str = ""
    steps: int = 2
    outcomes: list[str] = field(default_factory=list)
    created: Counter[str] = field(default_factory=Counter)
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    invocations: list[dict[str, Any]] = field(default_factory=list)
    _jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _endpoint_polls: dict[str, int] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def release(self, job: str) -> None:
        """Let a held job go on to complete."""
        self._held.discard(job)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        action = target.split(".", 1)[1] if target.startswith("SageMaker.") else ""
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if action == "DescribeHubContent":
            return self._hub(json.loads(body), start_response)
        if action:
            return self._sagemaker(action, environ, body, start_response)
        if str(environ.get("PATH_INFO", "")).endswith("/invocations"):
            return self._invoke(environ, body, start_response)
        return self._forward(environ, body, start_response)

    def _forward(self, environ: dict[str, Any], body: bytes, start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        return self.app(environ, start_response)

    def _moto(self, environ: dict[str, Any], body: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            captured.update(status=status, headers=headers)
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        reply = b"".join(self.app(environ, capture))
        return captured["status"], captured["headers"], reply

    @staticmethod
    def _reply(start_response: Callable[..., Any], status: str, payload: bytes,
               headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        kept = [(k, v) for k, v in headers or [("Content-Type", "application/x-amz-json-1.1")]
                if k.lower() != "content-length"]
        start_response(status, [*kept, ("Content-Length", str(len(payload)))])
        return [payload]

    def _hub(self, request: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        name = request.get("HubContentName", "")
        if request.get("HubName") != "SageMakerPublicHub" or name not in HUB:
            error = {"__type": "ResourceNotFound", "message": f"Hub content {name} not found"}
            return self._reply(start_response, "400 Bad Request", json.dumps(error).encode())
        reply = {"HubContentName": name, "HubContentVersion": request.get("HubContentVersion", "1.2.5"),
                 "HubContentType": "Model", "HubContentDocument": json.dumps(HUB[name])}
        return self._reply(start_response, "200 OK", json.dumps(reply).encode())

    def _sagemaker(self, action: str, environ: dict[str, Any], body: bytes,
                   start_response: Callable[..., Any]) -> list[bytes]:
        request = json.loads(body or b"{}")
        if action.startswith("Create"):
            with self._lock:
                self.created[action] += 1
                self.requests.setdefault(action, []).append(request)
            if action == "CreateTrainingJob":
                outcome = self.outcomes.pop(0) if self.outcomes else "complete"
                self._jobs[request["TrainingJobName"]] = {"polls": 0, "outcome": outcome, "request": request}
                if outcome == "hold":
                    self._held.add(request["TrainingJobName"])
            if action == "CreateEndpoint":
                self._endpoint_polls[request["EndpointName"]] = 0
        if action == "DeleteEndpoint":
            self._endpoint_polls.pop(request.get("EndpointName", ""), None)
        if action == "UpdateEndpoint":
            return self._update_endpoint(request, start_response)
        status, headers, reply = self._moto(environ, body.replace(b'"ml.g5.', b'"ml.g4dn.'))
        if status.startswith("200") and action == "DescribeTrainingJob":
            reply = json.dumps(self._job_phase(json.loads(reply))).encode()
        if status.startswith("200") and action == "DescribeEndpoint":
            reply = json.dumps(self._endpoint_phase(json.loads(reply))).encode()
        return self._reply(start_response, status, reply.replace(b'"ml.g4dn.', b'"ml.g5.'), headers)

    def _job_phase(self, reply: dict[str, Any]) -> dict[str, Any]:
        job = self._jobs.get(reply["TrainingJobName"])
        if job is None:
            return reply
        job["polls"] += 1
        spot = bool(job["request"].get("EnableManagedSpotTraining"))
        reply["EnableManagedSpotTraining"] = spot
        phases = SPOT_INTERRUPTED if job["outcome"] == "spot-interrupted" else PHASES
        if job["polls"] <= max(self.steps, len(phases) if phases is SPOT_INTERRUPTED else 0) \
                or reply["TrainingJobName"] in self._held:
            phase = phases[min(job["polls"], len(phases)) - 1]
            reply.update(TrainingJobStatus="InProgress", SecondaryStatus=phase)
            reply.pop("ModelArtifacts", None)
            return reply
        if job["outcome"].startswith("fail:"):
            reply.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason=job["outcome"][5:])
            reply.pop("ModelArtifacts", None)
            return reply
        prefix = f"{reply['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{reply['TrainingJobName']}/output/model/"
        if not job.get("written"):
            self._write_model(prefix, model_files(reply["TrainingJobName"]))
            job["written"] = True
        # A spot job is billed for less than it ran (here 70 % less, as the SageMaker docs' example).
        reply.update(ModelArtifacts={"S3ModelArtifacts": prefix}, BillableTimeInSeconds=431 if not spot else 300,
                     TrainingTimeInSeconds=431 if not spot else 1000,
                     FinalMetricDataList=[{"MetricName": "huggingface-textgeneration:train-loss", "Value": 1.25,
                                           "Timestamp": reply.get("CreationTime")},
                                          {"MetricName": "huggingface-textgeneration:eval-loss",
                                           "Value": _eval_loss(job["request"].get("HyperParameters") or {}),
                                           "Timestamp": reply.get("CreationTime")}])
        return reply

    def _write_model(self, prefix: str, files: dict[str, bytes]) -> None:
        """The training container's output, put into moto's S3 over HTTP like the real job's upload."""
        import boto3

        bucket, _, key = prefix[len("s3://"):].partition("/")
        s3 = boto3.session.Session().client("s3", endpoint_url=self.url, region_name="us-east-1")
        for name, content in files.items():
            s3.put_object(Bucket=bucket, Key=f"{key}{name}", Body=content)

    def _endpoint_phase(self, reply: dict[str, Any]) -> dict[str, Any]:
        name = reply["EndpointName"]
        polls = self._endpoint_polls.get(name, self.steps)
        self._endpoint_polls[name] = polls + 1
        if polls < self.steps:
            reply["EndpointStatus"] = "Creating"
        return reply

    def _update_endpoint(self, request: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """moto has no UpdateEndpoint: replace its endpoint with one on the new config, ``Updating`` for a while."""
        import boto3

        name = request["EndpointName"]
        client = boto3.session.Session().client("sagemaker", endpoint_url=self.url, region_name="us-east-1")
        client.delete_endpoint(EndpointName=name)
        arn = client.create_endpoint(EndpointName=name, EndpointConfigName=request["EndpointConfigName"])["EndpointArn"]
        with self._lock:
            self.created["UpdateEndpoint"] += 1
            self.requests.setdefault("UpdateEndpoint", []).append(request)
        self._endpoint_polls[name] = 0
        return self._reply(start_response, "200 OK", json.dumps({"EndpointArn": arn}).encode())

    def _invoke(self, environ: dict[str, Any], body: bytes, start_response: Callable[..., Any]) -> Iterable[bytes]:
        name = str(environ["PATH_INFO"]).split("/")[2]
        self.invocations.append({"endpoint": name, "content_type": environ.get("CONTENT_TYPE"),
                                 "body": json.loads(body)})
        if name not in self._endpoint_polls:
            error = {"message": f"Endpoint {name} of account 123456789012 not found."}
            return self._reply(start_response, "400 Bad Request", json.dumps(error).encode(),
                               [("Content-Type", "application/json"), ("x-amzn-ErrorType", "ValidationError")])
        status, headers, reply = self._moto(environ, body)
        if reply == b"body":
            headers, reply = [("Content-Type", "application/json")], json.dumps(DEFAULT_ANSWER).encode()
        return self._reply(start_response, status, reply, headers)


@contextmanager
def serve_with_shim() -> Iterator[tuple[str, SageMakerShim]]:
    """moto behind the shim on a free 127.0.0.1 port, threaded like ``ThreadedMotoServer``."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in test output
    shim = SageMakerShim(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, shim, threaded=True, request_handler=MotoRequestHandler)
    shim.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield shim.url, shim
    finally:
        server.shutdown()
        thread.join()
