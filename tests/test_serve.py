"""`pvbuild serve` and model.tar.gz: the SageMaker inference-container contract over a real socket."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvbuild.files import sha256_file
from pvbuild.services.serve import Generation, ModelRunner, unpack
from pvbuild.stages.package import pack_directory


def request(url: str, body: bytes | None = None) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def archive(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "model.tar.gz"
    pack_directory(tiny_base, path)
    return path


@pytest.fixture(scope="module")
def server(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("serve")
    ready = work / "ready.json"
    process = subprocess.Popen([sys.executable, "-m", "pvbuild", "serve", str(archive), "--port", "0",
                                "--work-dir", str(work), "--ready-file", str(ready)])
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file():
            assert process.poll() is None, "pvbuild serve exited before it was ready"
            assert time.monotonic() < deadline, "pvbuild serve did not get ready"
            time.sleep(0.1)
        yield json.loads(ready.read_text())["url"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_pack_is_reproducible_and_round_trips(tiny_base: Path, archive: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.tar.gz"
    members = pack_directory(tiny_base, again)
    assert "model.safetensors" in members and "tokenizer.json" in members
    assert sha256_file(again) == sha256_file(archive)
    model_dir = unpack(archive, tmp_path / "work", sha256_file(archive))
    runner = ModelRunner(model_dir)
    text = runner.generate(Generation("<|begin_of_text|>光伏", {"max_new_tokens": 5, "temperature": 0.0}))
    assert isinstance(text, str)


def test_ping_names_the_model(server: str, archive: Path) -> None:
    status, body = request(f"{server}/ping")
    assert status == 200 and body["status"] == "Healthy" and body["model_sha256"] == sha256_file(archive)


def test_invocations_return_generated_text(server: str) -> None:
    payload: dict[str, Any] = {"inputs": "<|begin_of_text|>关于光伏政策",
                               "parameters": {"max_new_tokens": 8, "temperature": 0.0, "stop": ["<|eot_id|>"]}}
    first = request(f"{server}/invocations", json.dumps(payload).encode())
    second = request(f"{server}/invocations", json.dumps(payload).encode())
    assert first[0] == 200 and isinstance(first[1][0]["generated_text"], str)
    assert first == second  # greedy decoding is deterministic
    sampled = {**payload, "parameters": {**payload["parameters"], "temperature": 0.6, "top_p": 0.9, "seed": 1,
                                         "repetition_penalty": 1.1}}
    assert request(f"{server}/invocations", json.dumps(sampled).encode())[0] == 200


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "body is not JSON"),
    (b'{"parameters": {}}', '"inputs"'),
    (b'{"inputs": "x", "parameters": {"max_tokens": 5}}', "unknown parameter 'max_tokens'"),
    (b'{"inputs": "x", "parameters": {"max_new_tokens": "5"}}', "wrong type"),
    (b'{"inputs": "x", "parameters": {"top_p": 2}}', "top_p"),
    (b'{"inputs": "x", "parameters": {"stop": [1]}}', "stop"),
])
def test_a_bad_payload_gets_400_with_the_reason(server: str, body: bytes, message: str) -> None:
    status, reply = request(f"{server}/invocations", body)
    assert status == 400 and message in reply["error"]


def test_unknown_paths_get_404(server: str) -> None:
    assert request(f"{server}/predict", b"{}")[0] == 404
    assert request(f"{server}/health")[0] == 404


def test_an_answer_cut_mid_character_ends_on_a_whole_character(tiny_base: Path) -> None:
    """max_new_tokens can stop inside a character that byte-level tokens spell in pieces: the
    answer drops the half character instead of ending in U+FFFD."""
    from transformers import AutoTokenizer

    from pvbuild.services.serve import complete_text

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    text = "光伏𠀀𪚥🌞鑫"  # characters the tiny tokenizer never saw: spelled byte by byte
    ids = tokenizer.encode(text, add_special_tokens=False)
    cut = [end for end in range(1, len(ids)) if str(tokenizer.decode(ids[:end])).endswith("\ufffd")]
    assert cut, "the tokenizer spells these characters whole; pick rarer ones"
    for end in cut:
        answer = complete_text(tokenizer, ids[:end])
        assert not answer.endswith("\ufffd") and text.startswith(answer) and answer.encode("utf-8")
