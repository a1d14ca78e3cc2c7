"""The training service seam: what a backend is asked (``TrainingRequest``) and answers (``JobState``).

Backends (``TrainingBackend``) are plugins registered through ``register_backends``: the local
trainer and SageMaker are built in. A backend receives request values only; it never sees the
workspace or the configuration of the other stages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pvbuild.plugin_types import BaseModel


class JobStatus(StrEnum):
    """SageMaker's training job statuses (the local backend uses the same)."""

    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"


RUNNING = JobStatus.IN_PROGRESS
COMPLETED = JobStatus.COMPLETED


@dataclass
class JobState:
    """What the training service says about one job."""

    name: str
    status: str
    arn: str = ""
    secondary_status: str = ""
    failure_reason: str = ""
    model_artifacts: str = ""
    billable_seconds: int | None = None
    training_seconds: int | None = None  # SageMaker's TrainingTimeInSeconds (spot: more than billed)
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    dropped_examples: list[str] = field(default_factory=list)  # lines left out: no room for a completion


@dataclass(frozen=True)
class TrainingRequest:
    """Everything a backend needs to start (or re-run) one job."""

    job_name: str
    base_model: BaseModel
    hyperparameters: Mapping[str, str]
    channels: Mapping[str, str]
    output_key: str
    output_uri: str
    instance_type: str
    options: Mapping[str, Any]


class TrainingBackend(Protocol):
    """A training service: look a job up, create one, wait for it to end."""

    def describe(self, job_name: str) -> JobState | None: ...

    def create(self, request: TrainingRequest) -> JobState: ...

    def wait(self, request: TrainingRequest, on_update: Callable[[JobState], None]) -> JobState: ...


