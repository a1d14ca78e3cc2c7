"""Local stand-ins for SageMaker: a training "service" that runs ``finetune`` in this process and an
endpoint that runs ``pvbuild serve`` in the background.

The training job's state lives in ``.pvbuild/<profile>/jobs/<job>.json`` with the pid that
runs it, so a job whose process died (Ctrl-C) is reported ``Stopped``. Its output is laid out
like a SageMaker job's: ``<prefix>/output/<job>/output/model/`` in the object store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvbuild.endpoint import CREATING, DELETED, IN_SERVICE, EndpointError
from pvbuild.progress import say
from pvbuild.records import atomic_write_text
from pvbuild.storage import ObjectStore, download_prefix, key_of
from pvbuild.training import COMPLETED, RUNNING, JobState, TrainingRequest

if TYPE_CHECKING:
    from pvbuild.pipeline import Pipeline


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_serve_process(pid: int | None) -> bool:
    """Whether ``pid`` is a ``pvbuild serve`` process (a pid may have been reused since it was recorded)."""
    try:
        command = Path(f"/proc/{int(pid or 0)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return process_alive(pid)  # no /proc: trust the pid, as before
    return b"pvbuild" in command and b"serve" in command


def text_fields(lines: list[dict[str, Any]]) -> list[str]:
    """Every string in the dataset lines (the tiny model's tokenizer is trained on them)."""
    found: list[str] = []
    for line in lines:
        for value in line.values():
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, list):
                found += [m.get("content", "") for m in value if isinstance(m, dict)]
    return found


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
            state.status, state.failure_reason = "Stopped", f"interrupted: process {pid} ended before the job finished"
        return state

    def create(self, request: TrainingRequest) -> JobState:
        return self._save(JobState(name=request.job_name, status=RUNNING, secondary_status="Starting"), os.getpid())

    def _download(self, uri: str, directory: Path) -> Path:
        download_prefix(self.store, key_of(uri), directory)
        return directory

    def _base_model(self, request: TrainingRequest, train_dir: Path, work: Path) -> Path | str:
        from pvbuild.finetune import channel_lines

        base = request.base_model
        configured = str(request.options.get("model_path") or "")
        if configured or not base.build_local:
            return configured or base.local_model or base.tokenizer
        lines, template = channel_lines(train_dir)
        texts = text_fields(lines) + list((template or {}).values())
        base.build_local(texts, work / "base", int(request.hyperparameters.get("seed", 42)))
        return work / "base"

    def wait(self, request: TrainingRequest, on_update: Callable[[JobState], None]) -> JobState:
        from pvbuild.finetune import finetune

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
                result = finetune(source, train_dir, validation_dir, request.hyperparameters, work / "model",
                                  lora=bool(request.options.get("lora")), device=str(request.options["device"]))
                for path in sorted((work / "model").rglob("*")):
                    if path.is_file():
                        self.store.put(f"{model_key}/{path.relative_to(work / 'model')}", path)
        except Exception as error:  # noqa: BLE001 - a failed job is recorded with its reason, like SageMaker's
            state = JobState(name=request.job_name, status="Failed", failure_reason=f"{type(error).__name__}: {error}")
            return self._save(state, None)
        state = JobState(
            name=request.job_name, status=COMPLETED, secondary_status=COMPLETED,
            model_artifacts=self.store.uri(model_key + "/"), billable_seconds=round(result.seconds),
            metrics={**result.metrics(), "train_examples": result.train_examples,
                     "validation_examples": result.validation_examples, "train_tokens": result.train_tokens},
            history={"step_loss": result.step_losses, "epoch_train_loss": result.epoch_train_loss,
                     "epoch_validation_loss": result.epoch_validation_loss})
        return self._save(state, None)


def http_json(url: str, payload: Mapping[str, Any] | None = None, timeout: float = 120.0) -> Any:
    """GET (no payload) or POST JSON; an HTTP error becomes an EndpointError with the server's message."""
    data = json.dumps(payload).encode("utf-8") if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        raise EndpointError(f"{url}: HTTP {error.code}: {error.read().decode('utf-8', 'replace')}") from error
    except (urllib.error.URLError, OSError) as error:
        raise EndpointError(f"{url}: {getattr(error, 'reason', error)}") from error


class LocalEndpoints:
    """``pvbuild serve`` processes started in the background, one per deployed model."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir

    def _archive(self, model: Mapping[str, Any]) -> Path:
        path = self.cache_dir / "models" / f"{model['sha256'][:16]}.tar.gz"
        if not path.is_file():
            self.store.get(key_of(model["uri"]), path)
        return path

    def _start(self, archive: Path, options: Mapping[str, Any], ready_file: Path, log: Path) -> subprocess.Popen[Any]:
        command = [sys.executable, "-m", "pvbuild", "serve", str(archive), "--host", str(options["host"]),
                   "--port", str(options["port"]), "--work-dir", str(self.cache_dir / "serve"),
                   "--ready-file", str(ready_file)]
        with log.open("ab") as stream:
            return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # outlives this doit run, like a real endpoint

    def _await_ready(self, process: subprocess.Popen[Any], ready_file: Path, log: Path,
                     timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        while not ready_file.is_file():
            if process.poll() is not None:
                tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                raise EndpointError(f"the endpoint process exited with {process.returncode} before serving; "
                                    f"log {log}:\n" + "\n".join(tail))
            if time.monotonic() - started > timeout:
                process.terminate()
                raise EndpointError(f"the endpoint did not come up within {timeout:.0f}s (endpoint.startup_timeout);"
                                    f" log: {log}")
            time.sleep(0.2)
        ready: dict[str, Any] = json.loads(ready_file.read_text(encoding="utf-8"))
        return ready

    def deploy(self, name: str, model: Mapping[str, Any], previous: Mapping[str, Any] | None,
               pipeline: Pipeline, started: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        options = pipeline.config.endpoint
        archive = self._archive(model)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        ready_file, log = self.cache_dir / "endpoint.ready", self.cache_dir / "endpoint.log"
        ready_file.unlink(missing_ok=True)
        say(f"deploy: starting the local endpoint for {name} (log: {log.relative_to(pipeline.config.project_dir)})")
        process = self._start(archive, options, ready_file, log)
        started({"backend": "local", "endpoint_name": name, "url": None, "pid": process.pid,
                 "model_sha256": model["sha256"], "model_uri": model["uri"], "status": CREATING,
                 "instance_type": "local"})
        ready = self._await_ready(process, ready_file, log, float(options["startup_timeout"]))
        ping = http_json(f"{ready['url']}/ping", timeout=10)
        if ping.get("model_sha256") != model["sha256"]:
            raise EndpointError(f"{ready['url']} answers for model {ping.get('model_sha256')}, not {model['sha256']}")
        if previous:
            self.delete(previous)
        return {"backend": "local", "endpoint_name": name, "url": ready["url"], "pid": ready["pid"],
                "model_sha256": model["sha256"], "model_uri": model["uri"], "status": IN_SERVICE,
                "instance_type": "local"}

    def problem(self, record: Mapping[str, Any]) -> str | None:
        pid = record.get("pid")
        if not process_alive(pid):
            return f"endpoint {record.get('endpoint_name')}: process {pid} is gone (stale pid)"
        try:
            ping = http_json(f"{record['url']}/ping", timeout=5)
        except EndpointError as error:
            return f"endpoint {record.get('endpoint_name')} does not answer: {error}"
        if ping.get("model_sha256") != record.get("model_sha256") or ping.get("pid") != pid:
            return f"{record['url']} is now another server (pid {ping.get('pid')}), not the recorded one (pid {pid})"
        return None

    def invoke(self, record: Mapping[str, Any], payload: Mapping[str, Any]) -> Any:
        return http_json(f"{record['url']}/invocations", payload)

    def delete(self, record: Mapping[str, Any]) -> dict[str, Any]:
        pid = record.get("pid")
        ours = is_serve_process(pid) if record.get("status") == CREATING else self.problem(record) is None
        if ours and pid:  # only signal the process that is really our server
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + 10
            while process_alive(int(pid)) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(pid), os.WNOHANG)
                time.sleep(0.1)
            if process_alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        return {**record, "status": DELETED, "pid": None}
