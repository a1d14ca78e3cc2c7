"""The ``train`` stage: one fine-tuning job per distinct (dataset, base model, hyperparameters).

The job is keyed by the digest of its inputs. Its record (``training.json``) is written the
moment the job exists, so an interrupted wait loses nothing: the next run finds the record,
asks the backend about the job and re-attaches to it instead of starting a second. A failed
or stopped job is recorded with the service's reason, stops the chain, and the next run
starts a new attempt. Backends (``TrainingBackend``): ``local`` (``local_services``) and
``sagemaker`` (``sagemaker``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pvbuild.artifacts import TrainingRecord
from pvbuild.config import suggest
from pvbuild.engine import staleness
from pvbuild.engine.candidates import Candidate
from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item, digest
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import ConfigError, PvbuildError
from pvbuild.plugin_types import BaseModel
from pvbuild.progress import say
from pvbuild.services.training import COMPLETED, RUNNING, JobState, JobStatus, TrainingBackend, TrainingRequest


class TrainingFailed(PvbuildError):
    """The job failed or was stopped; the message carries its FailureReason."""


# What JumpStart's Llama scripts (and the local trainer) accept for each hyperparameter: checked
# before anything runs, so a typo in a value fails at once rather than inside a paid job.
_WHOLE, _POSITIVE, _RATIO, _FLAG = "a whole number", "a number above 0", "a number from 0 to below 1", "True or False"
HYPERPARAMETER_RULES: dict[str, tuple[str, Callable[[float], bool]]] = {
    **dict.fromkeys(("epoch", "per_device_train_batch_size", "per_device_eval_batch_size", "lora_r", "lora_alpha",
                     "gradient_accumulation_steps"), (_WHOLE + " of at least 1", lambda v: v >= 1)),
    **dict.fromkeys(("max_input_length", "max_train_samples", "max_val_samples"),
                    (_WHOLE + " of at least 1, or -1 (all)", lambda v: v >= 1 or v == -1)),
    **dict.fromkeys(("seed", "train_data_split_seed"), (_WHOLE, lambda v: True)),
    "learning_rate": (_POSITIVE, lambda v: v > 0),
    **dict.fromkeys(("lora_dropout", "validation_split_ratio"), (_RATIO, lambda v: 0 <= v < 1)),
}
FLAG_HYPERPARAMETERS = frozenset({"instruction_tuned", "chat_dataset", "int8_quantization", "int4_quantization",
                                  "gradient_checkpointing", "enable_fsdp", "add_input_output_demarcation_key"})


def check_hyperparameter(name: str, value: Any, where: str) -> None:
    """A ConfigError naming the key unless ``value`` fits ``name``'s rule (names without one pass)."""
    problem = ""
    if name in FLAG_HYPERPARAMETERS:
        problem = "" if isinstance(value, bool) or str(value) in ("True", "False") else _FLAG
    elif name in HYPERPARAMETER_RULES:
        description, fits = HYPERPARAMETER_RULES[name]
        try:
            number = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            number = float("nan")
        whole = description.startswith(_WHOLE)
        ok = not math.isnan(number) and (not whole or number.is_integer()) and fits(number)
        problem = "" if ok else description
    if problem:
        raise ConfigError(f"{where}: training.hyperparameters.{name} = {value!r}: must be {problem}")


def _as_hyperparameter(value: Any) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def resolve_hyperparameters(base: BaseModel, overrides: Mapping[str, Any], dataset_format: str,
                            where: str, format_flags: Mapping[str, str]) -> dict[str, str]:
    """The base model's defaults, the configured overrides and the format flag, as JumpStart strings.

    Exactly one format flag (``instruction_tuned``, ``chat_dataset``: ``format_flags`` maps each
    registered format to its flag) is True, the one of the dataset's format.
    """
    if base.dataset_format != dataset_format:
        raise ConfigError(f"{where}: dataset.format is {dataset_format!r} but base model {base.name!r} trains "
                          f"on {base.dataset_format!r} data; set dataset.format = {base.dataset_format!r}")
    known = sorted(base.hyperparameter_names() | set(format_flags.values()))
    for name in overrides:
        if name not in known:
            raise ConfigError(f"{where}: training.hyperparameters.{name}: unknown hyperparameter of {base.name}"
                              f"{suggest(name, known)}; known: {', '.join(known)}")
    for name, value in {**base.hyperparameters, **overrides}.items():
        check_hyperparameter(name, value, where)
    merged = {name: _as_hyperparameter(value) for name, value in {**base.hyperparameters, **overrides}.items()}
    for fmt, flag in format_flags.items():
        wanted = "True" if fmt == dataset_format else "False"
        given = merged.setdefault(flag, wanted)
        if given != wanted:
            raise ConfigError(f"{where}: training.hyperparameters.{flag} = {given} disagrees with dataset.format = "
                              f"{dataset_format!r}: exactly one of instruction_tuned / chat_dataset is True, the "
                              "one matching the dataset's format (leave both unset to have it derived)")
    return dict(sorted(merged.items()))


def check_before_spending(workspace: Workspace, base: BaseModel, instance_type: str) -> None:
    """A paid job only starts with an allowed instance type, an accepted EULA and a role."""
    training, where = workspace.config.training, workspace.config.config_file
    if training["backend"] != "sagemaker":
        return
    if not base.jumpstart_model_id:
        raise ConfigError(f"{where}: training.base_model {base.name!r} has no JumpStart model; it trains locally only")
    if instance_type not in base.training_instance_types:
        raise ConfigError(f"{where}: training.instance_type {instance_type!r} is not allowed for {base.name}; "
                          f"allowed: {', '.join(base.training_instance_types)}")
    if training["accept_eula"] is not True:
        raise ConfigError(f"{where}: training.accept_eula: {base.name} needs its EULA accepted explicitly; read it "
                          "and set accept_eula = true")
    if not workspace.config.aws["role_arn"]:
        raise ConfigError(f"{where}: aws.role_arn: SageMaker needs an execution role ARN")


def job_name(base: BaseModel, input_digest: str, attempt: int) -> str:
    """``pv-<model>-<digest>-<attempt>``: at most 63 of [a-zA-Z0-9-], as SageMaker requires."""
    model = re.sub(r"[^a-zA-Z0-9]+", "-", base.name).strip("-")[:36]
    return f"pv-{model}-{input_digest[:10]}-{attempt}"


HEARTBEAT_SECONDS = 60.0  # a cloud job sits in "Training" for an hour: say it is still alive


def _reporter(started: float) -> Callable[[JobState], None]:
    last: dict[str, Any] = {"line": "", "at": 0.0}

    def on_update(state: JobState) -> None:
        line = f"train: job {state.name} {state.status}"
        line += f" / {state.secondary_status}" if state.secondary_status not in ("", state.status) else ""
        line += f" ({state.failure_reason})" if state.failure_reason else ""
        now = time.monotonic()
        if line != last["line"] or now - last["at"] >= HEARTBEAT_SECONDS:
            last.update(line=line, at=now)
            say(f"{line}, {now - started:.0f}s elapsed")
    return on_update


def _attach_or_create(backend: TrainingBackend, request: TrainingRequest) -> JobState:
    """Attach to a job of this name if one exists (its record was lost), else create it."""
    existing = backend.describe(request.job_name)
    if existing is not None and existing.status in (RUNNING, COMPLETED):
        say(f"train: attaching to existing job {request.job_name} ({existing.status})")
        return existing
    return backend.create(request)


def _with_state(record: TrainingRecord, state: JobState) -> TrainingRecord:
    """The record with what the service now says about the job."""
    fields = asdict(state)
    fields["job_name"] = fields.pop("name")
    fields["arn"] = fields["arn"] or None
    return dataclasses.replace(record, **fields)


def resolved_hyperparameters(workspace: Workspace, candidate: Candidate) -> dict[str, str]:
    flags = {name: entry.item.hyperparameter for name, entry in workspace.config.registry.dataset_formats.items()}
    where = workspace.config.config_file + (f" (candidate {candidate.name!r})" if candidate.name else "")
    return resolve_hyperparameters(workspace.base_model(candidate), candidate.hyperparameters,
                                   workspace.config.dataset["format"], where, flags)


def training_instance_type(workspace: Workspace, candidate: Candidate) -> str:
    return candidate.instance_type or next(iter(workspace.base_model(candidate).training_instance_types), "")


# Not part of one candidate's identity: adding or removing a candidate, or changing the rule that picks
# the one to deploy, leaves every other candidate's job as it is.
_NOT_A_JOBS_INPUT = frozenset({"hyperparameters", "accept_eula", "candidates", "select"})


class TrainStage(StageBase):
    name = "train"
    doc = "fine-tune the base model (one job per candidate and distinct data, model and hyperparameters)"
    record_output = True
    derived_inputs = frozenset({"data"})

    def items(self, workspace: Workspace) -> list[Item]:
        marker = workspace.read_upload()
        return [Item(candidate.key("train"), {
            "data": marker.dataset if marker else None,
            "base_model": workspace.identity(workspace.plugin_identity("base_models", candidate.base_model)),
            "hyperparameters": workspace.identity(resolved_hyperparameters(workspace, candidate)),
            "training": workspace.options_identity(
                {**workspace.config.training, "base_model": candidate.base_model,
                 "instance_type": training_instance_type(workspace, candidate)}, _NOT_A_JOBS_INPUT),
        }, str(workspace.training_record_of(candidate))) for candidate in workspace.candidates()]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """A job for exactly these inputs failed or was interrupted: say so (the record says why);
        with ``check --remote``, also ask the service about each recorded job."""
        stale = {entry.item.key: entry for entry in found}
        for item in items:
            record = TrainingRecord.read(Path(item.file))
            if record and record.input_digest == digest(item.inputs) and record.status != COMPLETED:
                stale[item.key] = StaleItem(item, f"last job {record.job_name} {record.status}: "
                                                  f"{record.failure_reason or 'no reason given'}")
            elif item.key not in stale and workspace.live and workspace.checking:
                name = record.job_name if record else None
                state = workspace.training_backend().describe(str(name))
                if state is None or state.status != COMPLETED:
                    stale[item.key] = StaleItem(item, f"job {name} is {state.status if state else 'unknown'} "
                                                      "at the service")
        return [stale[item.key] for item in items if item.key in stale]

    def _request(self, workspace: Workspace, candidate: Candidate, item: Item) -> tuple[TrainingRequest,
                                                                                           TrainingRecord]:
        """The job for ``candidate``'s inputs: a new attempt after a failure, the same job while it runs."""
        base = workspace.base_model(candidate)
        hyperparameters = resolved_hyperparameters(workspace, candidate)
        instance_type = training_instance_type(workspace, candidate)
        check_before_spending(workspace, base, instance_type)
        marker = workspace.read_upload()
        input_digest = digest(item.inputs)
        previous = workspace.read_training(candidate)
        attempt = 1
        if previous and previous.input_digest == input_digest:
            attempt = previous.attempt + 1
            state = workspace.training_backend().describe(previous.job_name)
            if state is not None and state.status in (RUNNING, COMPLETED):
                attempt = previous.attempt  # re-attach: the job of the last run is still ours
        output_key = f"{str(workspace.config.storage['prefix']).strip('/')}/output"
        request = TrainingRequest(
            job_name=job_name(base, input_digest, attempt), base_model=base, hyperparameters=hyperparameters,
            channels=marker.channels if marker else {}, output_key=output_key,
            output_uri=workspace.store().uri(output_key), instance_type=instance_type,
            options=workspace.config.training)
        record = TrainingRecord(
            job_name=request.job_name, status=JobStatus.IN_PROGRESS, attempt=attempt,
            backend=workspace.config.training["backend"], input_digest=input_digest,
            base_model={"name": base.name, "jumpstart_model_id": base.jumpstart_model_id,
                        "jumpstart_model_version": base.jumpstart_model_version},
            hyperparameters=hyperparameters, instance_type=instance_type, channels=dict(request.channels),
            output_uri=request.output_uri)
        return request, record

    def run(self, workspace: Workspace) -> StageResult:
        """Start (or re-attach to) every stale candidate's job first, then wait for each: on SageMaker
        they run at the same time; the local backend trains in its wait, one after the other."""
        stale = staleness.to_build(workspace, self)
        by_key = {candidate.key("train"): candidate for candidate in workspace.candidates()}
        backend = workspace.training_backend()
        started = []
        for entry in stale:
            candidate = by_key[entry.item.key]
            request, record = self._request(workspace, candidate, entry.item)
            state = _attach_or_create(backend, request)
            _with_state(record, state).write(workspace.training_record_of(candidate))  # Ctrl-C loses nothing
            started.append((entry.item, candidate, request, record))
        failures = []
        with workspace.finishing("train"):
            for item, candidate, request, record in started:
                state = backend.wait(request, _reporter(time.monotonic()))
                _with_state(record, state).write(workspace.training_record_of(candidate))
                if state.status != COMPLETED:
                    failures.append(f"training job {state.name} {state.status}: "
                                    f"{state.failure_reason or 'no reason given'}")
                    continue
                workspace.record("train", item)
                say(f"train: job {state.name} completed, model at {state.model_artifacts}")
        if failures:
            raise TrainingFailed("; ".join(failures) + "; the next run starts a new job")
        return StageResult("train", built=len(started), skipped=len(by_key) - len(started))


STAGE = TrainStage()
