"""The local endpoint backend: ``pvbuild serve`` processes started in the background, one per
deployed model, outliving the doit run like a real endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pvbuild.progress import say
from pvbuild.services.endpoints import CREATING, DELETED, IN_SERVICE, DeployRequest, EndpointError
from pvbuild.services.processes import is_serve_process, process_alive
from pvbuild.services.stores import ObjectStore


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
            self.store.get(self.store.key(model["uri"]), path)
        return path

    def _start(self, archive: Path, options: Mapping[str, Any], ready_file: Path, log: Path) -> subprocess.Popen[Any]:
        command = [sys.executable, "-m", "pvbuild", "serve", str(archive), "--host", str(options["host"]),
                   "--port", str(options["port"]), "--work-dir", str(self.cache_dir / "serve"),
                   "--ready-file", str(ready_file), "--idle-note", str(self.idle_note),
                   "--idle-seconds", str(float(options.get("idle_hours", 0.0)) * 3600)]
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

    def deploy(self, request: DeployRequest, started: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        name, model, previous, options = request.name, request.model, request.previous, request.options
        archive = self._archive(model)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        ready_file, log = self.cache_dir / "endpoint.ready", self.cache_dir / "endpoint.log"
        ready_file.unlink(missing_ok=True)
        say(f"deploy: starting the local endpoint for {name} (log: {os.path.relpath(log)})")
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

    @property
    def idle_note(self) -> Path:
        return self.cache_dir / "endpoint.idle"

    def _idle_stop(self, record: Mapping[str, Any]) -> float | None:
        """The seconds without a request after which the recorded server stopped itself, if it did."""
        pid = record.get("pid")
        if process_alive(pid):
            return None
        with contextlib.suppress(OSError, ValueError, KeyError):
            note = json.loads(self.idle_note.read_text(encoding="utf-8"))
            if note.get("pid") == pid:
                return float(note["idle_seconds"])
        return None

    def problem(self, record: Mapping[str, Any]) -> str | None:
        pid = record.get("pid")
        if not process_alive(pid):
            idle = self._idle_stop(record)
            if idle is not None:
                return (f"endpoint {record.get('endpoint_name')}: stopped after {idle / 3600:g} h "
                        "without a request (endpoint.idle_hours); the next doit starts it again")
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

    def idle(self, record: Mapping[str, Any], hours: float) -> bool:
        """A local server keeps its own time (``pvbuild serve --idle-seconds``) and exits by itself;
        teardown --idle only deletes one that already stopped for want of requests."""
        return self._idle_stop(record) is not None

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
