"""A local fake of OpenAI's Files and Batches endpoints (and chat completions), on 127.0.0.1.

``FakeBatchOpenAI`` takes an uploaded JSONL input file (``POST /v1/files``, multipart), creates a
batch from it (``POST /v1/batches``) and moves it on at each ``GET /v1/batches/{id}``: validating,
in_progress for ``polls_in_progress`` polls (or as long as ``hold`` is set), then completed with an
output file and an error file. ``fail_every`` fails every n-th request the first time it is seen
(HTTP 500 in the error file); ``expire`` ends batches as expired with only their first half
answered. Tokens are counted with ``count_tokens``, standing in for the model's tokenizer.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.standins import FakeOpenAI, conversation_for, count_tokens


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion answering a request body, with its tokens counted."""
    user = body["messages"][-1]["content"]
    content = json.dumps({"conversations": conversation_for(user)}, ensure_ascii=False)
    prompt = sum(count_tokens(message["content"]) for message in body["messages"])
    completion = count_tokens(content)
    return {"id": "chatcmpl-batch", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


@dataclass
class FakeBatchOpenAI(FakeOpenAI):
    """The Files and Batches endpoints of an OpenAI-compatible server, with scripted progress and faults."""

    polls_in_progress: int = 1
    hold: bool = False
    fail_every: int = 0
    expire: bool = False
    refuse_key: bool = False  # answer 401 to every Files and Batches request
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: Counter[str] = field(default_factory=Counter)
    submitted: Counter[str] = field(default_factory=Counter)  # custom_id: in how many batches
    answered: Counter[str] = field(default_factory=Counter)  # custom_id: how many successful answers
    tokens: Counter[str] = field(default_factory=Counter)  # prompt_tokens, completion_tokens answered
    seen_once: set[str] = field(default_factory=set)
    requests: Counter[str] = field(default_factory=Counter)  # "GET /batches", "POST /files", ...: HTTP calls

    def _new_file(self, data: bytes, name: str, purpose: str) -> dict[str, Any]:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0, "filename": name,
                "purpose": purpose, "status": "processed"}

    def create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        batch_id = f"batch_{len(self.batches) + 1}"
        lines = [json.loads(line) for line in self.files[body["input_file_id"]].splitlines() if line.strip()]
        for line in lines:
            self.submitted[line["custom_id"]] += 1
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"], "status": "validating", "created_at": 0,
            "metadata": body.get("metadata"), "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        return self.batches[batch_id]

    def poll(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches[batch_id]
        self.polls[batch_id] += 1
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and not self.hold and self.polls[batch_id] > self.polls_in_progress:
            self._finish(batch)
        return batch

    def _finish(self, batch: dict[str, Any]) -> None:
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines() if line.strip()]
        ran = lines[:len(lines) // 2] if self.expire else lines
        outputs, errors = [], []
        for line in ran:
            key = line["custom_id"]
            first = key not in self.seen_once
            self.seen_once.add(key)
            if self.fail_every and first and len(self.seen_once) % self.fail_every == 0:
                error = {"message": "The server had an error processing your request", "type": "server_error"}
                errors.append({"id": f"req_{key}", "custom_id": key, "error": None,
                               "response": {"status_code": 500, "request_id": key, "body": {"error": error}}})
                continue
            completion = answer(line["body"])
            self.answered[key] += 1
            self.tokens.update({name: completion["usage"][name] for name in ("prompt_tokens", "completion_tokens")})
            outputs.append({"id": f"req_{key}", "custom_id": key, "error": None,
                            "response": {"status_code": 200, "request_id": key, "body": completion}})
        for name, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
                batch[name] = self._new_file(data, f"{batch['id']}_{name}.jsonl", "batch_output")["id"]
        batch["status"] = "expired" if self.expire else "completed"
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs), "failed": len(errors)}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self
        chat = super().handler()

        class Handler(chat):  # type: ignore[misc,valid-type]
            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                path = self.path.removeprefix("/v1")
                fake.requests[f"GET /{path.split('/')[1]}"] += 1
                with fake.lock:
                    if path.startswith("/batches/") and path[9:] in fake.batches:
                        return self.reply(200, fake.poll(path[9:]))
                    if path.startswith("/files/") and path.endswith("/content"):
                        data = fake.files.get(path[7:-8])
                        if data is not None:
                            self.send_response(200)
                            self.send_header("Content-Type", "application/octet-stream")
                            self.send_header("Content-Length", str(len(data)))
                            self.end_headers()
                            self.wfile.write(data)
                            return None
                self.reply(404, {"error": {"message": f"no such path {self.path}", "type": "invalid_request_error"}})
                return None

            def do_POST(self) -> None:
                path = self.path.removeprefix("/v1")
                if path == "/chat/completions":
                    return super().do_POST()
                fake.requests[f"POST /{path.split('/')[1]}"] += 1
                data = self.body()
                if fake.refuse_key:
                    return self.reply(401, {"error": {"message": "Incorrect API key provided",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}})
                with fake.lock:
                    if path == "/files":
                        form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + data)
                        parts = {part.get_param("name", header="content-disposition"): part
                                 for part in form.iter_parts()}
                        upload = parts["file"]
                        content = upload.get_payload(decode=True)
                        assert isinstance(content, bytes)
                        return self.reply(200, fake._new_file(content, str(upload.get_filename()),
                                                              parts["purpose"].get_content().strip()))
                    if path == "/batches":
                        return self.reply(200, fake.create_batch(json.loads(data)))
                    if path.startswith("/batches/") and path.endswith("/cancel"):
                        batch = fake.batches[path[9:-7]]
                        if batch["status"] in ("validating", "in_progress"):
                            batch["status"] = "cancelled"
                        return self.reply(200, batch)
                return self.reply(404, {"error": {"message": f"no such path {self.path}"}})

        return Handler
