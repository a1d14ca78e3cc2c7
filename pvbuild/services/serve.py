"""``pvbuild serve``: a model.tar.gz behind the SageMaker inference-container contract.

``GET /ping`` answers 200 once the model is loaded (with the archive's SHA-256, so a caller
can tell this server from another process that took the port). ``POST /invocations`` takes
the payload of the SageMaker LLM endpoints, ``{"inputs": prompt, "parameters": {...}}``, and
returns ``[{"generated_text": ...}]`` (the continuation, cut at the first stop string). A
payload it cannot honour gets a 400 naming the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pvbuild.errors import PvbuildError
from pvbuild.files import atomic_write_text, sha256_file

PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "max_new_tokens": (int,), "top_p": (int, float), "top_k": (int,), "temperature": (int, float),
    "repetition_penalty": (int, float), "stop": (list,), "do_sample": (bool,), "seed": (int,),
    "return_full_text": (bool,),
}
MAX_NEW_TOKENS = 4096


class PayloadError(PvbuildError):
    """The request body is not a payload the endpoint can serve (answered with 400)."""


@dataclass(frozen=True)
class Generation:
    """A validated request: the prompt and generation parameters."""

    inputs: str
    parameters: Mapping[str, Any]


def unpacked_dir(work_dir: Path, sha256: str) -> Path:
    """Where the archive with this SHA-256 is unpacked (shared by the server and ``ask``)."""
    return work_dir / sha256[:16]


def unpack(archive: Path, work_dir: Path, sha256: str) -> Path:
    """Unpack once per archive content; a half-unpacked directory is never used."""
    target = unpacked_dir(work_dir, sha256)
    if target.is_dir():
        return target
    temporary = target.with_name(f".{target.name}.unpacking-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(temporary, filter="data")
    temporary.replace(target)
    return target


def parse_payload(body: bytes) -> Generation:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PayloadError(f"body is not JSON: {error}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), str) or not payload["inputs"]:
        raise PayloadError('expected {"inputs": "<prompt>", "parameters": {...}} with a non-empty string "inputs"')
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise PayloadError('"parameters" must be an object')
    for name, value in parameters.items():
        if name not in PARAMETER_TYPES:
            raise PayloadError(f"unknown parameter {name!r}; known: {', '.join(sorted(PARAMETER_TYPES))}")
        if not isinstance(value, PARAMETER_TYPES[name]) or (isinstance(value, bool) and name != "do_sample"
                                                              and name != "return_full_text"):
            raise PayloadError(f"parameter {name!r} has the wrong type: {value!r}")
    if not 0 < parameters.get("max_new_tokens", 1) <= MAX_NEW_TOKENS:
        raise PayloadError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}")
    if not 0 < parameters.get("top_p", 1.0) <= 1.0:
        raise PayloadError("top_p must be in (0, 1]")
    if parameters.get("temperature", 1.0) < 0 or parameters.get("repetition_penalty", 1.0) <= 0:
        raise PayloadError("temperature must be >= 0 and repetition_penalty > 0")
    if not all(isinstance(stop, str) for stop in parameters.get("stop", [])):
        raise PayloadError('"stop" must be a list of strings')
    return Generation(payload["inputs"], parameters)


def complete_text(tokenizer: Any, token_ids: list[int]) -> str:
    """The decoded tokens without a character cut in half at the end: byte-level tokens can end
    mid-character when ``max_new_tokens`` runs out, which decodes to U+FFFD ("\ufffd")."""
    text = str(tokenizer.decode(token_ids, skip_special_tokens=False))
    end = len(token_ids)
    while text.endswith("\ufffd") and end > 0:
        end -= 1
        text = str(tokenizer.decode(token_ids[:end], skip_special_tokens=False))
    return text


class ModelRunner:
    """A loaded causal LM that turns a ``Generation`` into text (one request at a time)."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pvbuild.services.finetune import pick_device, quiet_transformers, use_cpu_threads

        quiet_transformers()
        self.device = pick_device(os.environ.get("PVBUILD_DEVICE", "auto"))
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir))
        self.model = model.to(self.device).eval()
        if self.device == "cpu":
            use_cpu_threads(self.model)
        self.lock = threading.Lock()

    def generate(self, request: Generation) -> str:
        import torch

        parameters = request.parameters
        encoded = self.tokenizer(request.inputs, return_tensors="pt", add_special_tokens=False).to(self.device)
        temperature = float(parameters.get("temperature", 1.0))
        sample = bool(parameters.get("do_sample", temperature > 0))
        options: dict[str, Any] = {"max_new_tokens": int(parameters.get("max_new_tokens", 256)), "do_sample": sample,
                                   "repetition_penalty": float(parameters.get("repetition_penalty", 1.0)),
                                   "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        if sample:
            options |= {"temperature": temperature, "top_p": float(parameters.get("top_p", 1.0))}
            options |= {"top_k": int(parameters["top_k"])} if "top_k" in parameters else {}
        with self.lock, torch.no_grad():
            if "seed" in parameters:
                torch.manual_seed(int(parameters["seed"]))
            output = self.model.generate(**encoded, **options)
        text = complete_text(self.tokenizer, output[0][encoded["input_ids"].shape[1]:].tolist())
        for stop in [*parameters.get("stop", []), self.tokenizer.eos_token or ""]:
            if stop and stop in text:
                text = text[:text.index(stop)]
        text = text.replace(self.tokenizer.pad_token or "\0", "")
        return request.inputs + text if parameters.get("return_full_text") else text


class Idle:
    """When the endpoint was last asked something (``POST /invocations``; health checks do not count,
    as SageMaker counts invocations)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def watch(self, limit: float, stop: Callable[[], None], note: Path | None) -> None:
        """Call ``stop`` once nothing was asked for ``limit`` seconds, leaving ``note`` saying why."""
        while True:
            left = limit - (time.monotonic() - self.last)
            if left <= 0:
                break
            time.sleep(min(max(left, 0.05), 30.0))
        print(f"no request for {limit:.0f} s (endpoint.idle_hours): shutting down", flush=True)
        if note is not None:
            atomic_write_text(note, json.dumps({"pid": os.getpid(), "idle_seconds": limit}))
        stop()


def make_handler(runner: ModelRunner, sha256: str, idle: Idle | None = None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            if self.path == "/ping":
                self._reply(200, {"status": "Healthy", "model_sha256": sha256, "pid": os.getpid()})
            else:
                self._reply(404, {"error": f"no such path {self.path}; the endpoint serves GET /ping and "
                                           "POST /invocations"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/invocations":
                self._reply(404, {"error": f"no such path {self.path}; POST /invocations"})
                return
            if idle is not None:
                idle.touch()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                request = parse_payload(body)
            except PayloadError as error:
                self._reply(400, {"error": str(error)})
                return
            try:
                self._reply(200, [{"generated_text": runner.generate(request)}])
            except Exception as error:  # noqa: BLE001 - the caller gets the reason, the server stays up
                self._reply(500, {"error": f"generation failed: {error}"})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


def serve(archive: Path, host: str, port: int, work_dir: Path, ready_file: Path | None = None,
          idle_seconds: float = 0.0, idle_note: Path | None = None) -> None:
    """Load the archive's model and serve it until SIGTERM/SIGINT, or until ``idle_seconds`` pass
    without an invocation (0: never), leaving ``idle_note`` to say so."""
    sha256 = sha256_file(archive)
    runner = ModelRunner(unpack(archive, work_dir, sha256))
    idle = Idle()
    server = ThreadingHTTPServer((host, port), make_handler(runner, sha256, idle))
    url = f"http://{host}:{server.server_address[1]}"
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if idle_seconds > 0:
        threading.Thread(target=idle.watch, args=(idle_seconds, server.shutdown, idle_note), daemon=True).start()
    if ready_file is not None:
        atomic_write_text(ready_file, json.dumps({"url": url, "pid": os.getpid(), "model_sha256": sha256}))
    print(f"serving {archive.name} ({sha256[:12]}) at {url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
