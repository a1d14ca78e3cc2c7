"""In-memory services for the stage unit tests: an object store, a trainer and an endpoint service
that satisfy pvbuild's service protocols (``ObjectStore``, ``TrainingBackend``, ``EndpointBackend``)
and keep what they were asked, as httpx's tests inject a transport. They stand in for services,
never for pvbuild's own code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvbuild.files import atomic_write_bytes
from pvbuild.services.endpoints import DeployRequest
from pvbuild.services.stores import ObjectInfo, StorageError
from pvbuild.services.training import JobState, JobStatus, TrainingRequest


class MemoryStore:
    """Objects in a dict; ETags computed like S3's."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []
        self.copies: list[str] = []

    def uri(self, key: str) -> str:
        return f"memory://{key}"

    def key(self, uri: str) -> str:
        return uri.removeprefix("memory://")

    def head(self, key: str) -> ObjectInfo | None:
        data = self.objects.get(key)
        if data is None:
            return None
        return ObjectInfo(len(data), _etag(data))

    def put(self, key: str, path: Path) -> ObjectInfo:
        self.objects[key] = path.read_bytes()
        self.puts.append(key)
        info = self.head(key)
        assert info is not None
        return info

    def copy(self, source: str, key: str) -> ObjectInfo:
        if source not in self.objects:
            raise StorageError(f"{self.uri(source)}: no such object to copy")
        self.objects[key] = self.objects[source]
        self.copies.append(key)
        info = self.head(key)
        assert info is not None
        return info

    def keys(self, prefix: str) -> list[str]:
        return sorted(key for key in self.objects if key == prefix or key.startswith(prefix.rstrip("/") + "/"))

    def get(self, key: str, path: Path) -> None:
        if key not in self.objects:
            raise StorageError(f"{self.uri(key)}: no such object")
        atomic_write_bytes(path, self.objects[key])


def _etag(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass
class MemoryTraining:
    """Jobs that end at once: completed with a one-file model in ``store``, or failed with ``fail``."""

    store: MemoryStore
    fail: str = ""
    created: list[TrainingRequest] = field(default_factory=list)
    jobs: dict[str, JobState] = field(default_factory=dict)

    def describe(self, job_name: str) -> JobState | None:
        return self.jobs.get(job_name)

    def create(self, request: TrainingRequest) -> JobState:
        self.created.append(request)
        self.jobs[request.job_name] = JobState(request.job_name, JobStatus.IN_PROGRESS)
        return self.jobs[request.job_name]

    def wait(self, request: TrainingRequest, on_update: Callable[[JobState], None]) -> JobState:
        if self.fail:
            state = JobState(request.job_name, JobStatus.FAILED, failure_reason=self.fail)
        else:
            key = f"{request.output_key}/{request.job_name}/output/model"
            self.store.objects[f"{key}/weights.bin"] = request.job_name.encode()
            state = JobState(request.job_name, JobStatus.COMPLETED, model_artifacts=self.store.uri(key + "/"),
                             billable_seconds=7, metrics={"train_loss": 1.5})
        self.jobs[request.job_name] = state
        on_update(state)
        return state


@dataclass
class MemoryEndpoints:
    """Endpoints that are records; ``down`` names endpoints that stopped answering."""

    deployed: list[DeployRequest] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    down: set[str] = field(default_factory=set)

    def deploy(self, request: DeployRequest, started: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        self.deployed.append(request)
        record = {"backend": "memory", "endpoint_name": request.name, "model_sha256": request.model["sha256"],
                  "model_uri": request.model["uri"], "instance_type": request.instance_type, "status": "InService"}
        started({**record, "status": "Creating"})
        return record

    def problem(self, record: Mapping[str, Any]) -> str | None:
        return f"endpoint {record['endpoint_name']} does not answer" if record["endpoint_name"] in self.down else None

    def invoke(self, record: Mapping[str, Any], payload: Mapping[str, Any]) -> Any:
        return [{"generated_text": "答：按规定备案。"}]

    def delete(self, record: Mapping[str, Any]) -> dict[str, Any]:
        self.deleted.append(str(record["endpoint_name"]))
        return {**record, "status": "Deleted"}
