"""The local training backend: fine-tunes with ``finetune`` in this process, laid out like SageMaker.

The job's state lives in ``<cache>/jobs/<job>.json`` with the pid that runs it, so a job whose
process died (Ctrl-C) is reported ``Stopped``. Its output goes to
``<prefix>/output/<job>/output/model/`` in the object store, as a SageMaker job's does.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvbuild.files import atomic_write_text
from pvbuild.services.processes import process_alive
from pvbuild.services.stores import ObjectStore, download_prefix
from pvbuild.services.training import COMPLETED, RUNNING, JobState, JobStatus, TrainingRequest

if TYPE_CHECKING:
    from pvbuild.plugin_types import BaseModel
    from pvbuild.services.finetune import FinetuneResult


def text_fields(lines: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every string in the dataset lines (the tiny model's tokenizer is trained on them)."""
    found: list[str] = []
    for line in lines:
        for value in line.values():
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, list):
                found += [m.get("content", "") for m in value if isinstance(m, dict)]
    return found


def base_model_source(base: BaseModel, options: Mapping[str, Any], hyperparameters: Mapping[str, Any],
                      models_dir: Path, train_dir: Path, work: Path) -> Path | str:
    """What the local trainer starts from: ``training.model_path``, a model the plugin prepares (converted once
    into ``models_dir``), one it builds from the training texts into ``work`` (tiny), or its hub id."""
    from pvbuild.services.sft_data import channel_lines

    configured = str(options.get("model_path") or "")
    if not configured and base.prepare_local:
        return base.prepare_local(models_dir)
    if configured or not base.build_local:
        return configured or base.local_model or base.tokenizer
    lines, template = channel_lines(train_dir)
    texts = text_fields([line.values for line in lines]) + list((template or {}).values())
    base.build_local(texts, work, int(hyperparameters.get("seed", 42)))
    return work


class LocalTraining:
    """Fine-tunes with ``finetune`` (transformers, + peft LoRA when ``training.lora``)."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.jobs = cache_dir / "jobs"

    def _state_file(self, name: str) -> Path:
        return self.jobs / f"{name}.json"

    def _save(self, state: JobState, pid: int | None) -> JobState:
        atomic_write_text(self._state_file(state.name), json.dumps({**asdict(state), "pid": pid}))
        return state

    def describe(self, job_name: str) -> JobState | None:
        try:
            saved = json.loads(self._state_file(job_name).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        pid = saved.pop("pid", None)
        state = JobState(**saved)
        if state.status == RUNNING and pid != os.getpid() and not process_alive(pid):
            state.status = JobStatus.STOPPED
            state.failure_reason = f"interrupted: process {pid} ended before the job finished"
        return state

    def create(self, request: TrainingRequest) -> JobState:
        return self._save(JobState(name=request.job_name, status=RUNNING, secondary_status="Starting"), os.getpid())

    def _download(self, uri: str, directory: Path) -> Path:
        download_prefix(self.store, self.store.key(uri), directory)
        return directory

    def _base_model(self, request: TrainingRequest, train_dir: Path, work: Path) -> Path | str:
        return base_model_source(request.base_model, request.options, request.hyperparameters,
                                 self.cache_dir / "models", train_dir, work / "base")

    def _train(self, request: TrainingRequest, source: Path | str, train_dir: Path, validation_dir: Path | None,
               work: Path) -> FinetuneResult:
        """In this process, or data-parallel in one process per GPU (``training.gpus``)."""
        from pvbuild.services.finetune import finetune, pick_device
        from pvbuild.services.launch import LaunchSpec, launch, processes_for

        device = pick_device(str(request.options["device"]))
        lora, long_prompts = bool(request.options.get("lora")), str(request.options.get("long_prompts", "drop"))
        processes = processes_for(request.options.get("gpus", "auto"), device)
        compile_setting = str(request.options.get("compile", "auto"))  # finetune.compiles reads it
        if processes == 1:
            return finetune(source, train_dir, validation_dir, request.hyperparameters, work / "model", lora=lora,
                            device=device, long_prompts=long_prompts, compile_setting=compile_setting)
        spec = LaunchSpec(str(source), str(train_dir), str(validation_dir) if validation_dir else None,
                          dict(request.hyperparameters), str(work / "model"), lora, device, long_prompts,
                          str(work / "result.json"), compile_setting)
        return launch(spec, processes, self.cache_dir / "training.log")

    def wait(self, request: TrainingRequest, on_update: Callable[[JobState], None]) -> JobState:
        state = self.describe(request.job_name)
        if state is not None and state.status == COMPLETED:
            return state
        state = self._save(JobState(name=request.job_name, status=RUNNING, secondary_status="Training"), os.getpid())
        on_update(state)
        model_key = f"{request.output_key}/{request.job_name}/output/model"
        try:
            # In the profile's scratch folder, not $TMPDIR: a killed build's checkpoint is found and pruned.
            (self.cache_dir / "scratch").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="pvbuild-train-", dir=self.cache_dir / "scratch") as scratch:
                work = Path(scratch)
                train_dir = self._download(request.channels["training"], work / "input" / "training")
                validation = request.channels.get("validation")
                validation_dir = self._download(validation, work / "input" / "validation") if validation else None
                source = self._base_model(request, train_dir, work)
                result = self._train(request, source, train_dir, validation_dir, work)
                for path in sorted((work / "model").rglob("*")):
                    if path.is_file():
                        self.store.put(f"{model_key}/{path.relative_to(work / 'model')}", path)
        except Exception as error:  # noqa: BLE001 - a failed job is recorded with its reason, like SageMaker's
            state = JobState(name=request.job_name, status=JobStatus.FAILED,
                             failure_reason=f"{type(error).__name__}: {error}")
            return self._save(state, None)
        state = JobState(
            name=request.job_name, status=COMPLETED, secondary_status=COMPLETED,
            model_artifacts=self.store.uri(model_key + "/"), billable_seconds=round(result.seconds),
            metrics=result.metrics(), dropped_examples=result.dropped,
            history={"step_loss": result.step_losses, "epoch_train_loss": result.epoch_train_loss,
                     "epoch_validation_loss": result.epoch_validation_loss})
        return self._save(state, None)
