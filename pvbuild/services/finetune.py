"""Fine-tuning on the files a JumpStart job gets, with the JumpStart hyperparameter names.

Instruction mode (``instruction_tuned``): each ``train.jsonl`` line fills ``template.json``;
the loss is on the completion only. Chat mode (``chat_dataset``): each ``dialog`` is
rendered with the tokenizer's chat template; the loss is on the assistant turns only. With
no validation file, ``validation_split_ratio`` of the training lines (shuffled by ``seed``)
are held out, as JumpStart does. LoRA (peft) is merged into the weights before saving, so
the output directory is a plain Hugging Face model either way.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvbuild.errors import PvbuildError
from pvbuild.progress import Progress

IGNORE = -100  # label of tokens that carry no loss


class TrainingDataError(PvbuildError):
    """The training files do not fit the mode (a missing placeholder, a malformed dialog)."""


@dataclass
class Example:
    """One tokenised training example."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class FinetuneResult:
    """Losses and counts of one fine-tuning run."""

    step_losses: list[float] = field(default_factory=list)
    epoch_train_loss: list[float] = field(default_factory=list)
    epoch_validation_loss: list[float] = field(default_factory=list)
    train_examples: int = 0
    validation_examples: int = 0
    train_tokens: int = 0
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        found = {"train_loss": self.epoch_train_loss[-1] if self.epoch_train_loss else math.nan}
        if self.epoch_validation_loss:
            found["validation_loss"] = self.epoch_validation_loss[-1]
        return found


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise TrainingDataError(f"{path}:{number}: not JSON: {error}") from error
    return lines


def channel_lines(channel: Path) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
    """The JSON lines of every ``*.jsonl`` in a channel directory, and its ``template.json`` if any."""
    template_file = channel / "template.json"
    template = json.loads(template_file.read_text(encoding="utf-8")) if template_file.is_file() else None
    lines = [line for path in sorted(channel.glob("*.jsonl")) for line in read_jsonl(path)]
    return lines, template


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_instruction(tokenizer: Any, template: Mapping[str, str], line: Mapping[str, Any],
                       max_length: int) -> Example:
    try:
        prompt = template["prompt"].format(**line)
        completion = template["completion"].format(**line)
    except KeyError as error:
        raise TrainingDataError(f"a line lacks the template placeholder {error}: {dict(line)}") from error
    prompt_ids = [tokenizer.bos_token_id, *_ids(tokenizer, prompt)]
    completion_ids = [*_ids(tokenizer, completion), tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_length]
    return Example(ids, labels)


def encode_chat(tokenizer: Any, dialog: Sequence[Mapping[str, str]], max_length: int) -> Example:
    """Loss on each assistant turn: the tokens between the prompt up to it and the dialog through it."""
    def render(messages: Sequence[Mapping[str, str]], prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=prompt)
        return _ids(tokenizer, text)

    ids = render(dialog, False)
    labels = [IGNORE] * len(ids)
    for index, message in enumerate(dialog):
        if message.get("role") == "assistant":
            start, end = len(render(dialog[:index], True)), len(render(dialog[:index + 1], False))
            labels[start:end] = ids[start:end]
    return Example(ids[:max_length], labels[:max_length])


def encode(tokenizer: Any, lines: Sequence[Mapping[str, Any]], template: Mapping[str, str] | None,
           chat: bool, max_length: int) -> list[Example]:
    if chat:
        if not all(isinstance(line.get("dialog"), list) for line in lines):
            raise TrainingDataError("chat_dataset=True needs lines of the form {\"dialog\": [...]}")
        return [encode_chat(tokenizer, line["dialog"], max_length) for line in lines]
    if template is None:
        raise TrainingDataError("instruction_tuned=True needs template.json beside train.jsonl")
    return [encode_instruction(tokenizer, template, line, max_length) for line in lines]


def _batches(examples: list[Example], size: int, pad_id: int, rng: random.Random | None) -> list[dict[str, Any]]:
    import torch

    order = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(order)
    batches = []
    for start in range(0, len(order), size):
        chosen = [examples[i] for i in order[start:start + size]]
        width = max(len(e.input_ids) for e in chosen)
        batches.append({
            "input_ids": torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in chosen]),
            "attention_mask": torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids))
                                            for e in chosen]),
            "labels": torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in chosen]),
        })
    return batches


def _mean_loss(model: Any, batches: list[dict[str, Any]], device: str) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [float(model(**{k: v.to(device) for k, v in batch.items()}).loss) for batch in batches]
    model.train()
    return sum(losses) / len(losses)


def quiet_transformers() -> None:
    """Keep transformers' own progress bars and advice out of pvbuild's output."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def pick_device(requested: str) -> str:
    """``auto``: CUDA when there is a GPU, else the CPU with ``cpu_threads``."""
    import torch

    device = requested if requested != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(cpu_threads())
    return device


def cpu_threads() -> int:
    """Threads for CPU training and serving: ``OMP_NUM_THREADS`` when the user set it, else one. On
    2-core VMs PyTorch's default of one per core has trained small models up to 18x slower (a first
    doit of 69 s instead of 16 s); where it makes no difference, one thread costs nothing."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _with_lora(model: Any, hyperparameters: Mapping[str, Any]) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(hyperparameters["lora_r"]), lora_alpha=int(hyperparameters["lora_alpha"]),
                        lora_dropout=float(hyperparameters["lora_dropout"]), task_type="CAUSAL_LM",
                        target_modules=["q_proj", "v_proj"])
    return get_peft_model(model, config)


def split_validation(lines: list[dict[str, Any]], ratio: float, seed: int) -> tuple[list[Any], list[Any]]:
    shuffled = list(lines)
    random.Random(seed).shuffle(shuffled)
    held = int(len(shuffled) * ratio)
    if held == 0 or held == len(shuffled):
        return shuffled, []
    return shuffled[held:], shuffled[:held]


def finetune(model_source: Path | str, train_dir: Path, validation_dir: Path | None,
             hyperparameters: Mapping[str, Any], output_dir: Path, lora: bool, device: str = "auto") -> FinetuneResult:
    """Train the model at ``model_source`` on the channel directories; save it to ``output_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    started = time.monotonic()
    seed = int(hyperparameters.get("seed", 42))
    torch.manual_seed(seed)
    chat = str(hyperparameters.get("chat_dataset", "False")) == "True"
    max_length = int(hyperparameters["max_input_length"])
    tokenizer = AutoTokenizer.from_pretrained(str(model_source))
    train_lines, template = channel_lines(train_dir)
    validation_lines = channel_lines(validation_dir)[0] if validation_dir else []
    if not validation_lines:
        train_lines, validation_lines = split_validation(
            train_lines, float(hyperparameters.get("validation_split_ratio", 0.0)), seed)
    train = encode(tokenizer, train_lines, template, chat, max_length)
    validation = encode(tokenizer, validation_lines, template, chat, max_length)
    if not train:
        raise TrainingDataError(f"{train_dir}: no training examples")
    device = pick_device(device)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_source), dtype=torch.float32)
    model = model.to(device)
    model = _with_lora(model, hyperparameters) if lora else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=float(hyperparameters["learning_rate"]))
    batch_size = int(hyperparameters["per_device_train_batch_size"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    validation_batches = _batches(validation, batch_size, pad_id, None)
    epochs = int(hyperparameters["epoch"])
    rng = random.Random(seed)
    result = FinetuneResult(train_examples=len(train), validation_examples=len(validation),
                            train_tokens=sum(len(e.input_ids) for e in train) * epochs)
    progress = Progress("train", epochs * math.ceil(len(train) / batch_size))
    model.train()
    for epoch in range(1, epochs + 1):
        losses = []
        for batch in _batches(train, batch_size, pad_id, rng):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            progress.note = f"epoch {epoch}/{epochs}, loss {losses[-1]:.3f}"
            progress.advance()
        result.step_losses += losses
        result.epoch_train_loss.append(sum(losses) / len(losses))
        if validation_batches:
            result.epoch_validation_loss.append(_mean_loss(model, validation_batches, device))
    progress.close()
    model = model.merge_and_unload() if lora else model
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    result.seconds = time.monotonic() - started
    return result
