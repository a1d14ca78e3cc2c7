"""The local trainer: loss goes down in both modes, labels cover only what should be learned."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvbuild.services.finetune import IGNORE, TrainingDataError, encode_chat, encode_instruction, finetune
from tests.models import TEMPLATE, chat_lines, hyperparameters, instruction_lines, write_channel


@pytest.fixture(scope="module")
def tokenizer(tiny_base: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


def test_instruction_training_lowers_the_loss(tiny_base: Path, tmp_path: Path) -> None:
    train = write_channel(tmp_path / "training", instruction_lines(), TEMPLATE)
    result = finetune(tiny_base, train, None, hyperparameters(chat=False), tmp_path / "model", lora=False)
    assert result.train_examples == 12 and result.validation_examples == 4  # validation_split_ratio 0.25
    assert result.epoch_train_loss[-1] < result.epoch_train_loss[0] - 0.5
    assert result.epoch_validation_loss[-1] < result.epoch_validation_loss[0]
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "tokenizer.json").is_file()


def test_chat_training_lowers_the_loss(tiny_base: Path, tmp_path: Path) -> None:
    train = write_channel(tmp_path / "training", chat_lines(), None)
    result = finetune(tiny_base, train, None, hyperparameters(chat=True), tmp_path / "model", lora=False)
    assert result.epoch_train_loss[-1] < result.epoch_train_loss[0] - 0.5
    assert result.epoch_validation_loss[-1] < result.epoch_validation_loss[0]


def test_lora_is_merged_into_a_plain_model(tiny_base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    train = write_channel(tmp_path / "training", instruction_lines(), TEMPLATE)
    result = finetune(tiny_base, train, None, hyperparameters(chat=False, epoch=1), tmp_path / "model", lora=True)
    assert result.step_losses
    assert not (tmp_path / "model" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))


def test_instruction_labels_cover_the_completion_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    line = instruction_lines(1)[0]
    example = encode_instruction(tokenizer, TEMPLATE, line, 512)
    learned = [token for token in example.labels if token != IGNORE]
    assert tokenizer.decode(learned) == line["answer"] + "<|eot_id|>"


def test_chat_labels_cover_the_assistant_turns_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    dialog = chat_lines(1)[0]["dialog"]
    example = encode_chat(tokenizer, dialog, 512)
    learned = tokenizer.decode([token for token in example.labels if token != IGNORE])
    assert learned == dialog[1]["content"] + "<|eot_id|>" + dialog[3]["content"] + "<|eot_id|>"


def test_a_line_without_a_template_placeholder_is_named(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrainingDataError, match="placeholder 'answer'"):
        encode_instruction(tokenizer, TEMPLATE, {"context": "c", "question": "q"}, 512)
