"""The JSON records of the model half as typed values: the upload marker (``upload.json``), the
training job record (``training.json``), the packed model (``model.json``) and the endpoint
(``endpoint.json``).

Each reads and writes exactly the JSON earlier versions wrote (same keys, same values), so a
committed tree stays valid; a key this version does not know is kept in ``extra`` and written
back. Statuses are the service seams' ``StrEnum`` s (``JobStatus``, ``EndpointStatus``), which
serialise as their plain strings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pvbuild.errors import StateError
from pvbuild.files import write_artifact

R = TypeVar("R", bound="JsonRecord")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON artifact (marker, record, manifest), or None when it does not exist yet."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StateError(f"{path}: unreadable ({error}); delete it and run doit to rebuild it") from error
    if not isinstance(value, dict):
        raise StateError(f"{path}: expected a JSON object; delete it and run doit to rebuild it")
    return value


@dataclass
class JsonRecord:
    """A JSON object with known keys as fields; unknown keys ride along in ``extra``."""

    FILE: ClassVar[str] = ""
    # Keys only some backends write: left out when None, unless the record read had them.
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()
    # Keys added after 0.1: left out when empty, unless the record read had them (0.1 records round-trip).
    OMIT_WHEN_EMPTY: ClassVar[frozenset[str]] = frozenset()

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    present: frozenset[str] = field(default=frozenset(), kw_only=True, compare=False, repr=False)

    @classmethod
    def from_json(cls: type[R], value: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "present"}
        known = {key: item for key, item in value.items() if key in names}
        try:
            return cls(**known, extra={key: item for key, item in value.items() if key not in names},
                       present=frozenset(value))
        except TypeError as error:  # a required key is missing
            raise StateError(f"{cls.FILE}: {error}; delete it and run doit to rebuild it") from error

    @classmethod
    def read(cls: type[R], path: Path) -> R | None:
        """The record in ``path``, or None when there is none yet."""
        value = read_json_object(path)
        return None if value is None else cls.from_json(value)

    def to_json(self) -> dict[str, Any]:
        value = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "present")}
        value = {key: item for key, item in value.items() if key in self.present
                 or not (item is None and key in self.OMIT_WHEN_NONE or item == [] and key in self.OMIT_WHEN_EMPTY)}
        return {**self.extra, **value}

    def write(self, path: Path) -> None:
        write_artifact(path, self.to_json())


@dataclass
class UploadMarker(JsonRecord):
    """What was uploaded where: the dataset digest, its format, a URI prefix per channel, and every
    object with its size and ETag."""

    FILE: ClassVar[str] = "upload.json"

    dataset: str
    format: str
    channels: dict[str, str]
    objects: list[dict[str, Any]]


@dataclass
class TrainingRecord(JsonRecord):
    """One training job: what it was asked (written the moment the job exists) and what the
    service says about it."""

    FILE: ClassVar[str] = "training.json"
    OMIT_WHEN_EMPTY: ClassVar[frozenset[str]] = frozenset({"dropped_examples"})
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"training_seconds"})

    job_name: str
    status: str
    attempt: int = 1
    backend: str = ""
    input_digest: str = ""
    base_model: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    instance_type: str = ""
    channels: dict[str, str] = field(default_factory=dict)
    output_uri: str = ""
    arn: str | None = None
    secondary_status: str = ""
    failure_reason: str = ""
    model_artifacts: str = ""
    billable_seconds: int | None = None
    training_seconds: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    dropped_examples: list[str] = field(default_factory=list)  # lines without room for a completion


@dataclass
class ModelRecord(JsonRecord):
    """The packed ``model.tar.gz``: where it is, its size, ETag and SHA-256, its members, and the
    job output it was packed from."""

    FILE: ClassVar[str] = "model.json"

    uri: str
    sha256: str
    size: int = 0
    etag: str = ""
    job_name: str = ""
    source: str = ""
    members: list[str] = field(default_factory=list)


@dataclass
class EndpointRecord(JsonRecord):
    """A deployed endpoint: which model serves where. ``url``/``pid`` are the local backend's,
    ``arn`` and the model/config names SageMaker's; ``previous`` is set only while a deploy runs."""

    FILE: ClassVar[str] = "endpoint.json"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({
        "url", "pid", "arn", "model_name", "endpoint_config_name", "creation_time", "previous"})

    endpoint_name: str
    status: str
    backend: str = ""
    model_sha256: str = ""
    model_uri: str = ""
    instance_type: str = ""
    url: str | None = None
    pid: int | None = None
    arn: str | None = None
    model_name: str | None = None
    endpoint_config_name: str | None = None
    creation_time: str | None = None
    previous: dict[str, Any] | None = None
