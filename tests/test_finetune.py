"""The local trainer (TRL's SFTTrainer): loss goes down in both modes, labels cover only what should
be learned, a prompt with no room for its completion is named and left out, a NaN loss fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pvbuild.services.finetune import NonFiniteLoss, finetune
from pvbuild.services.sft_data import IGNORE, TrainingDataError, encode_chat, encode_instruction
from tests.models import TEMPLATE, chat_lines, hyperparameters, instruction_lines, write_channel


@pytest.fixture(scope="module")
def tokenizer(tiny_base: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


def test_instruction_training_lowers_the_loss(tiny_base: Path, tmp_path: Path) -> None:
    train = write_channel(tmp_path / "training", instruction_lines(), TEMPLATE)
    result = finetune(tiny_base, train, None, hyperparameters(chat=False), tmp_path / "model", lora=False)
    assert result.train_examples == 12 and result.validation_examples == 4  # validation_split_ratio 0.25
    assert result.steps == 4 * 2 and 0 < result.first_step_seconds < result.train_seconds  # 4 epochs, 12 lines in 8s
    assert result.epoch_train_loss[-1] < result.epoch_train_loss[0] - 0.5
    assert result.epoch_validation_loss[-1] < result.epoch_validation_loss[0]
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "tokenizer.json").is_file()


def test_chat_training_lowers_the_loss(tiny_base: Path, tmp_path: Path) -> None:
    train = write_channel(tmp_path / "training", chat_lines(), None)
    result = finetune(tiny_base, train, None, hyperparameters(chat=True), tmp_path / "model", lora=False)
    assert result.epoch_train_loss[-1] < result.epoch_train_loss[0] - 0.5
    assert result.epoch_validation_loss[-1] < result.epoch_validation_loss[0]


def test_liger_kernels_only_on_cuda() -> None:
    """Liger's kernels are Triton GPU code: the CPU trainer never asks for them, installed or not."""
    from pvbuild.services.finetune import liger_kernels, sft_config

    assert not liger_kernels("cpu")
    assert sft_config(hyperparameters(chat=False), Path("unused"), "cpu", 10, False).use_liger_kernel is False


def test_compile_auto_picks_long_runs_on_one_gpu_and_true_is_refused_where_it_cannot_run() -> None:
    """``training.compile``: "auto" compiles only where the measured break-even holds (one CUDA GPU, SDPA,
    COMPILE_FROM_STEPS optimizer steps or more); true where no CUDA graph can run is an error naming the fix."""
    from pvbuild.services.finetune import COMPILE_FROM_STEPS, CompileRefused, compiles

    assert compiles("auto", "cuda", 1, COMPILE_FROM_STEPS)
    assert not compiles("auto", "cuda", 1, COMPILE_FROM_STEPS - 1)  # a short run would lose more than it gains
    assert not compiles("auto", "cuda", 2, 10 * COMPILE_FROM_STEPS)  # several processes: not measured
    assert not compiles("auto", "cpu", 1, 10 * COMPILE_FROM_STEPS)
    assert not compiles("false", "cuda", 1, 10 * COMPILE_FROM_STEPS)
    assert compiles("true", "cuda:0", 1, 1)
    for device, processes in (("cpu", 1), ("cuda", 2)):
        with pytest.raises(CompileRefused, match='training.compile = true needs one CUDA GPU .*set it to "auto"'):
            compiles("true", device, processes, 1)


def test_a_compiled_backbone_pads_to_fewer_lengths_and_leaves_liger_out() -> None:
    from pvbuild.services.finetune import COMPILED_PAD, liger_kernels, sft_config

    config = sft_config(hyperparameters(chat=False), Path("unused"), "cuda", 10, False, compiled=True)
    assert config.pad_to_multiple_of == COMPILED_PAD and config.use_liger_kernel is False
    assert sft_config(hyperparameters(chat=False), Path("unused"), "cuda", 10, False).pad_to_multiple_of == 64
    assert not liger_kernels("cuda", compiled=True)


def test_compile_backbone_compiles_the_decoder_stack_in_place_keeping_the_weight_names(tiny_base: Path) -> None:
    """The saved model must not gain torch.compile's ``_orig_mod.`` prefix, with LoRA adapters too. (Running the
    compiled graphs needs a CUDA GPU: bench_train.py --compile true measures that.)"""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from pvbuild.services.finetune import compile_backbone, lora_config

    model = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    names = list(model.state_dict())
    compile_backbone(model, strict=True)
    assert model.model._compiled_call_impl is not None and model.lm_head._compiled_call_impl is None
    assert list(model.state_dict()) == names
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base)), lora_config(hyperparameters(
        chat=False)))
    compile_backbone(adapted, strict=True)
    assert adapted.get_base_model().model._compiled_call_impl is not None
    # Dynamo's warnings stay, less its traceback a Triton kernel it cannot analyse (Liger's, patched in earlier).
    dynamo_log = logging.getLogger("torch._dynamo")
    unanalysed = "Encountered an exception in identify_mutated_tensors, assuming every input is mutated"
    assert not dynamo_log.filter(logging.makeLogRecord({"msg": unanalysed}))
    assert dynamo_log.filter(logging.makeLogRecord({"msg": "torch._dynamo hit config.recompile_limit (8)"}))


def test_the_profiled_steps_are_ten_early_ones_or_those_named() -> None:
    from pvbuild.services.finetune import PROFILED_STEPS, profiled_steps

    assert profiled_steps("1") == PROFILED_STEPS and profiled_steps("200:210") == (200, 210)
    for wrong in ("210:200", "a:b", "0:5"):
        with pytest.raises(ValueError, match=f"PVBUILD_TORCH_PROFILE={wrong}: expected 1 or FIRST:LAST"):
            profiled_steps(wrong)


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
    assert example is not None
    learned = [token for token in example.labels if token != IGNORE]
    assert tokenizer.decode(learned) == line["answer"] + "<|eot_id|>"


def test_chat_labels_cover_the_assistant_turns_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    dialog = chat_lines(1)[0]["dialog"]
    example = encode_chat(tokenizer, dialog, 512)
    assert example is not None
    learned = tokenizer.decode([token for token in example.labels if token != IGNORE])
    assert learned == dialog[1]["content"] + "<|eot_id|>" + dialog[3]["content"] + "<|eot_id|>"


def test_a_line_without_a_template_placeholder_is_named(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrainingDataError, match="placeholder 'answer'"):
        encode_instruction(tokenizer, TEMPLATE, {"context": "c", "question": "q"}, 512)


def long_prompt_lines() -> list[dict[str, str]]:
    lines = instruction_lines()
    lines[5] = {**lines[5], "context": "光伏" * 300}  # a prompt of far more than max_input_length tokens
    return lines


def test_a_prompt_with_no_room_for_its_completion_is_named_and_left_out(tiny_base: Path, tmp_path: Path) -> None:
    import math

    train = write_channel(tmp_path / "training", long_prompt_lines(), TEMPLATE)
    params = hyperparameters(chat=False, epoch=2, validation_split_ratio=0.0, max_input_length=64)
    result = finetune(tiny_base, train, None, params, tmp_path / "model", lora=False)
    assert result.dropped == ["train.jsonl:6"] and result.train_examples == 15
    assert result.metrics()["dropped_examples"] == 1
    assert all(math.isfinite(loss) for loss in result.step_losses + result.epoch_train_loss)


def test_long_prompts_truncate_keeps_the_completion(tiny_base: Path, tmp_path: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    line = long_prompt_lines()[5]
    example = encode_instruction(tokenizer, TEMPLATE, line, 64, long_prompts="truncate")  # type: ignore[arg-type]
    assert example is not None and example.truncated and len(example.input_ids) <= 64
    assert tokenizer.decode([token for token in example.labels if token != IGNORE]) == line["answer"] + "<|eot_id|>"
    train = write_channel(tmp_path / "training", long_prompt_lines(), TEMPLATE)
    params = hyperparameters(chat=False, epoch=1, validation_split_ratio=0.0, max_input_length=64)
    result = finetune(tiny_base, train, None, params, tmp_path / "model", lora=False, long_prompts="truncate")
    assert result.dropped == [] and result.truncated == 1 and result.train_examples == 16


def test_a_loss_that_becomes_nan_fails_the_job_naming_the_step(tiny_base: Path, tmp_path: Path) -> None:
    train = write_channel(tmp_path / "training", instruction_lines(), TEMPLATE)
    params = hyperparameters(chat=False, epoch=3, learning_rate=1e30)
    with pytest.raises(NonFiniteLoss, match=r"loss became (nan|inf) at step \d+"):
        finetune(tiny_base, train, None, params, tmp_path / "model", lora=False)
    assert not (tmp_path / "model").exists(), "no model is saved"
