"""The endpoint service seam: what a backend is asked to deploy (``DeployRequest``) and the record
it answers with (a JSON-able dict: ``endpoint.json``).

Backends (``EndpointBackend``) are plugins registered through ``register_backends``: the local
``pvbuild serve`` and SageMaker are built in. A backend receives request values only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pvbuild.errors import PvbuildError
from pvbuild.plugin_types import BaseModel


class EndpointStatus(StrEnum):
    """The statuses an endpoint record can hold (SageMaker's names)."""

    CREATING = "Creating"  # recorded the moment a deploy starts a server, before it serves
    IN_SERVICE = "InService"
    DELETED = "Deleted"


IN_SERVICE = EndpointStatus.IN_SERVICE
DELETED = EndpointStatus.DELETED
CREATING = EndpointStatus.CREATING


class EndpointError(PvbuildError):
    """Deploying, invoking or deleting an endpoint failed; the message carries the reason."""


@dataclass(frozen=True)
class DeployRequest:
    """Everything a backend needs to serve one packed model."""

    name: str  # the endpoint's name: the training job's
    model: Mapping[str, Any]  # model.json: uri, sha256, size
    previous: Mapping[str, Any] | None  # the endpoint record it replaces once the new one serves
    instance_type: str
    base_model: BaseModel
    accept_eula: bool
    options: Mapping[str, Any]  # the profile's endpoint section
    where: str  # the configuration file, for messages


class EndpointBackend(Protocol):
    """An inference service: deploy a packed model (replacing ``previous`` once the new one serves,
    calling ``started`` with a record the moment something exists that costs or must be cleaned up),
    say why a recorded endpoint is not serving, invoke it, delete it."""

    def deploy(self, request: DeployRequest, started: Callable[[dict[str, Any]], None]) -> dict[str, Any]: ...

    def problem(self, record: Mapping[str, Any]) -> str | None: ...

    def invoke(self, record: Mapping[str, Any], payload: Mapping[str, Any]) -> Any: ...

    def delete(self, record: Mapping[str, Any]) -> dict[str, Any]: ...

    def idle(self, record: Mapping[str, Any], hours: float) -> bool:
        """Whether the endpoint has served no invocation for the last ``hours`` (and existed that long)."""
        ...
