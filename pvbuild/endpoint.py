"""The deploy step and ``pvbuild teardown``: the packed model behind an endpoint, and its record.

The endpoint is named after the training job. An unchanged model is not redeployed; a new
model replaces the old one (the old endpoint is removed once the new one serves). The record
(``endpoint.json``) says which model serves where; ``teardown`` deletes what deploy created
and marks the record ``Deleted``. Backends (``EndpointBackend``): ``local`` and ``sagemaker``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from pvbuild.errors import PvbuildError
from pvbuild.outcomes import StageResult
from pvbuild.progress import say
from pvbuild.records import write_artifact

if TYPE_CHECKING:
    from pvbuild.pipeline import Pipeline

IN_SERVICE = "InService"
DELETED = "Deleted"
CREATING = "Creating"  # recorded the moment a deploy starts a server, before it serves


class EndpointError(PvbuildError):
    """Deploying, invoking or deleting an endpoint failed; the message carries the reason."""


class EndpointBackend(Protocol):
    """An inference service: deploy a packed model (replacing ``previous`` once the new one
    serves), say why a recorded endpoint is not serving, invoke it, delete it."""

    def deploy(self, name: str, model: Mapping[str, Any], previous: Mapping[str, Any] | None,
               pipeline: Pipeline, started: Callable[[dict[str, Any]], None]) -> dict[str, Any]: ...

    def problem(self, record: Mapping[str, Any]) -> str | None: ...

    def invoke(self, record: Mapping[str, Any], payload: Mapping[str, Any]) -> Any: ...

    def delete(self, record: Mapping[str, Any]) -> dict[str, Any]: ...


def run_deploy_stage(pipeline: Pipeline) -> StageResult:
    item = pipeline.items("deploy")[0]
    model = pipeline.read_artifact(pipeline.model_record)
    training = pipeline.read_artifact(pipeline.training_record)
    if not model or not training:
        raise EndpointError("nothing to deploy: model.json or training.json is missing; run the package step first")
    backend = pipeline.endpoint_backend()
    previous = pipeline.read_artifact(pipeline.endpoint_record)
    if previous and previous.get("status") == CREATING:
        previous = _after_interrupted_deploy(backend, previous)
    live = previous if previous and previous.get("status") == IN_SERVICE else None

    def started(record: dict[str, Any]) -> None:
        """Record the new server at once (and the one it replaces): a kill from now on leaks nothing."""
        write_artifact(pipeline.endpoint_record, {**record, "previous": live})

    record = backend.deploy(str(training["job_name"]), model, live, pipeline, started)
    write_artifact(pipeline.endpoint_record, record)
    with pipeline.finishing("deploy"):
        pipeline.record("deploy", item)
    say(f"deploy: endpoint {record['endpoint_name']} in service ({record.get('url') or record.get('arn')})")
    return StageResult("deploy", built=1)


def _after_interrupted_deploy(backend: EndpointBackend, interrupted: Mapping[str, Any]) -> dict[str, Any] | None:
    """A deploy was killed after it started a server: stop that process (a cloud endpoint of the same
    name is picked up again by the next deploy) and go on from the endpoint it was replacing."""
    if interrupted.get("pid"):
        backend.delete(interrupted)
    previous = interrupted.get("previous")
    return dict(previous) if isinstance(previous, Mapping) else None


def teardown(pipeline: Pipeline) -> str:
    """Delete the recorded endpoint (and, on SageMaker, its config and model); update the record."""
    record = pipeline.read_artifact(pipeline.endpoint_record)
    if not record:
        return "no endpoint record: nothing to tear down"
    if record.get("status") == DELETED:
        return f"endpoint {record.get('endpoint_name')} was already torn down"
    backend = pipeline.endpoint_backend()
    if record.get("status") == CREATING and isinstance(record.get("previous"), Mapping):
        backend.delete(record["previous"])  # an interrupted deploy left the endpoint it was replacing
    deleted = backend.delete(record)
    deleted.pop("previous", None)
    write_artifact(pipeline.endpoint_record, deleted)
    pipeline.rewrote("deploy", pipeline.items("deploy"))
    return f"endpoint {record.get('endpoint_name')} torn down"


def live_endpoint(pipeline: Pipeline) -> tuple[EndpointBackend, dict[str, Any]]:
    """The recorded endpoint and its backend, or an error saying how to get one."""
    record = pipeline.read_artifact(pipeline.endpoint_record)
    if not record:
        raise EndpointError(f"no endpoint yet ({pipeline.endpoint_record} is missing); run doit to deploy one")
    if record.get("status") != IN_SERVICE:
        raise EndpointError(f"endpoint {record.get('endpoint_name')} is {record.get('status')}; run doit to deploy")
    backend = pipeline.endpoint_backend()
    problem = backend.problem(record)
    if problem:
        raise EndpointError(f"{problem}; run doit to redeploy")
    return backend, record
