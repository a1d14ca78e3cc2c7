"""The ``deploy`` stage and ``pvbuild teardown``: the packed model behind an endpoint, and its record.

The endpoint is named after the training job. An unchanged model is not redeployed; a new
model replaces the old one (the old endpoint is removed once the new one serves). The record
(``endpoint.json``) says which model serves where; ``teardown`` deletes what deploy created
and marks the record ``Deleted``. Backends (``EndpointBackend``) are plugins: ``local`` and ``sagemaker`` are built in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pvbuild.artifacts import EndpointRecord
from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.files import write_artifact
from pvbuild.progress import say
from pvbuild.services.endpoints import CREATING, DELETED, IN_SERVICE, DeployRequest, EndpointBackend, EndpointError


def _after_interrupted_deploy(backend: EndpointBackend, interrupted: Mapping[str, Any]) -> dict[str, Any] | None:
    """A deploy was killed after it started a server: stop that process (a cloud endpoint of the same
    name is picked up again by the next deploy) and go on from the endpoint it was replacing."""
    if interrupted.get("pid"):
        backend.delete(interrupted)
    previous = interrupted.get("previous")
    return dict(previous) if isinstance(previous, Mapping) else None


def teardown(workspace: Workspace, idle_only: bool = False) -> str:
    """Delete the recorded endpoint (and, on SageMaker, its config and model); update the record.
    ``idle_only``: only if it served nothing for ``endpoint.idle_hours`` (``teardown --idle``, e.g. from cron)."""
    record = workspace.read_artifact(workspace.endpoint_record)
    if not record:
        return "no endpoint record: nothing to tear down"
    if record.get("status") == DELETED:
        return f"endpoint {record.get('endpoint_name')} was already torn down"
    backend = workspace.endpoint_backend()
    if idle_only:
        hours = float(workspace.config.endpoint["idle_hours"])
        if hours <= 0:
            raise PvbuildError(f"{workspace.config.config_file}: endpoint.idle_hours: teardown --idle needs it set "
                               "(hours without an invocation, e.g. 2)")
        if not backend.idle(record, hours):
            return f"endpoint {record.get('endpoint_name')} served requests within {hours:g} h: left in service"
    if record.get("status") == CREATING and isinstance(record.get("previous"), Mapping):
        backend.delete(record["previous"])  # an interrupted deploy left the endpoint it was replacing
    deleted = backend.delete(record)
    deleted.pop("previous", None)
    write_artifact(workspace.endpoint_record, deleted)
    workspace.rewrote("deploy", STAGE.items(workspace))
    return f"endpoint {record.get('endpoint_name')} torn down"


def live_endpoint(workspace: Workspace) -> tuple[EndpointBackend, dict[str, Any]]:
    """The recorded endpoint and its backend, or an error saying how to get one."""
    record = workspace.read_artifact(workspace.endpoint_record)
    if not record:
        raise EndpointError(f"no endpoint yet ({workspace.endpoint_record} is missing); run doit to deploy one")
    if record.get("status") != IN_SERVICE:
        raise EndpointError(f"endpoint {record.get('endpoint_name')} is {record.get('status')}; run doit to deploy")
    backend = workspace.endpoint_backend()
    problem = backend.problem(record)
    if problem:
        raise EndpointError(f"{problem}; run doit to redeploy")
    return backend, record


def endpoint_instance_type(workspace: Workspace) -> str:
    instance_type = str(workspace.config.endpoint["instance_type"])
    return instance_type or next(iter(workspace.base_model().inference_instance_types), "")


class DeployStage(StageBase):
    name = "deploy"
    doc = "serve model.tar.gz from an endpoint (unchanged model: no redeploy)"
    record_output = True
    derived_inputs = frozenset({"model"})

    def items(self, workspace: Workspace) -> list[Item]:
        winner = workspace.winner()
        model = workspace.read_model(winner)
        inputs = {"model": model.sha256 if model else None,
                  "endpoint": workspace.options_identity(workspace.config.endpoint)}
        if winner.name:  # several candidates: which one is served (changing the rule redeploys, trains nothing)
            inputs["candidate"] = winner.name
        return [Item("deploy", inputs, str(workspace.endpoint_record))]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """Beyond the records: a torn-down or dead endpoint is deployed again (nothing after it changes)."""
        if found:
            return found
        endpoint = workspace.read_endpoint()
        if endpoint is None or endpoint.status != IN_SERVICE:
            name, status = (endpoint.endpoint_name, endpoint.status) if endpoint else (None, None)
            return [StaleItem(items[0], f"endpoint {name} is {status}", False)]
        problem = workspace.endpoint_backend().problem(endpoint.to_json()) if workspace.live else None
        return [StaleItem(items[0], problem, False)] if problem else []

    def run(self, workspace: Workspace) -> StageResult:
        item = self.items(workspace)[0]
        model, training = workspace.read_model(), workspace.read_training()
        if model is None or training is None:
            raise EndpointError("nothing to deploy: model.json or training.json is missing; run the package step first")
        backend = workspace.endpoint_backend()
        previous = workspace.read_artifact(workspace.endpoint_record)
        if previous and previous.get("status") == CREATING:
            previous = _after_interrupted_deploy(backend, previous)
        live = previous if previous and previous.get("status") == IN_SERVICE else None

        def started(record: dict[str, Any]) -> None:
            """Record the new server at once (and the one it replaces): a kill from now on leaks nothing."""
            write_artifact(workspace.endpoint_record, {**record, "previous": live})

        config = workspace.config
        request = DeployRequest(name=training.job_name, model=model.to_json(), previous=live,
                                instance_type=endpoint_instance_type(workspace), base_model=workspace.base_model(),
                                accept_eula=bool(config.training["accept_eula"]), options=config.endpoint,
                                where=config.config_file)
        record = EndpointRecord.from_json(backend.deploy(request, started))
        record.write(workspace.endpoint_record)
        with workspace.finishing("deploy"):
            workspace.record("deploy", item)
        say(f"deploy: endpoint {record.endpoint_name} in service ({record.url or record.arn or record.backend})")
        return StageResult("deploy", built=1)


STAGE = DeployStage()
