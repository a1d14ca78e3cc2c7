"""The training examples of a JumpStart-style channel: read, split, tokenised, and checked for room.

Instruction mode (``instruction_tuned``): each ``*.jsonl`` line fills ``template.json``; the loss is
on the completion only. Chat mode (``chat_dataset``): each ``dialog`` is rendered with the
tokenizer's chat template; the loss is on the assistant turns only. With no validation channel,
``validation_split_ratio`` of the lines (shuffled by ``seed``) are held out, as JumpStart does.

An example whose prompt fills ``max_input_length`` keeps no token to learn from: its loss would be
0/0, a NaN that poisons the epoch's mean. Such examples are left out and named (``Encoded.dropped``),
or, with ``long_prompts = "truncate"``, their prompt loses its oldest tokens so the completion fits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pvbuild.errors import PvbuildError

IGNORE = -100  # label of tokens that carry no loss


class TrainingDataError(PvbuildError):
    """The training files do not fit the mode (a missing placeholder, a malformed dialog)."""


class LongPrompts(StrEnum):
    """What to do with an example whose prompt leaves no room for its completion."""

    DROP = "drop"  # leave it out, and name it in the training record
    TRUNCATE = "truncate"  # keep the prompt's last tokens, so the whole completion fits


@dataclass(frozen=True)
class Line:
    """One JSON line of a channel, with where it came from (``train-00003-of-00064.jsonl:17``)."""

    where: str
    values: Mapping[str, Any]


@dataclass
class Example:
    """One tokenised training example."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # its prompt lost its oldest tokens (LongPrompts.TRUNCATE)


@dataclass
class Encoded:
    """A split's examples, and the lines left out for want of room (by ``Line.where``)."""

    examples: list[Example] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    truncated: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.examples)


def read_jsonl(path: Path) -> list[Line]:
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text.strip():
            try:
                lines.append(Line(f"{path.name}:{number}", json.loads(text)))
            except json.JSONDecodeError as error:
                raise TrainingDataError(f"{path}:{number}: not JSON: {error}") from error
    return lines


def channel_lines(channel: Path) -> tuple[list[Line], dict[str, str] | None]:
    """The JSON lines of every ``*.jsonl`` in a channel directory (a sharded dataset has several),
    and its ``template.json`` if any."""
    template_file = channel / "template.json"
    template = json.loads(template_file.read_text(encoding="utf-8")) if template_file.is_file() else None
    lines = [line for path in sorted(channel.glob("*.jsonl")) for line in read_jsonl(path)]
    return lines, template


def split_validation(lines: list[Line], ratio: float, seed: int) -> tuple[list[Line], list[Line]]:
    shuffled = list(lines)
    random.Random(seed).shuffle(shuffled)
    held = int(len(shuffled) * ratio)
    if held == 0 or held == len(shuffled):
        return shuffled, []
    return shuffled[held:], shuffled[:held]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_instruction(tokenizer: Any, template: Mapping[str, str], line: Mapping[str, Any], max_length: int,
                       long_prompts: LongPrompts = LongPrompts.DROP) -> Example | None:
    """The example, or None when the prompt leaves no room for the completion (and ``DROP``)."""
    try:
        prompt = template["prompt"].format(**line)
        completion = template["completion"].format(**line)
    except KeyError as error:
        raise TrainingDataError(f"a line lacks the template placeholder {error}: {dict(line)}") from error
    prompt_ids = _ids(tokenizer, prompt)
    completion_ids = [*_ids(tokenizer, completion), tokenizer.eos_token_id]
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    truncated = len(head) + len(prompt_ids) >= max_length
    if truncated:
        if long_prompts is LongPrompts.DROP:
            return None
        room = max(1, max_length - len(head) - len(completion_ids))  # at least one prompt token survives
        prompt_ids = prompt_ids[-room:]
    prompt_ids = head + prompt_ids
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_length]
    return Example(ids, labels, truncated)


def encode_chat(tokenizer: Any, dialog: Sequence[Mapping[str, str]], max_length: int) -> Example | None:
    """Loss on each assistant turn: the tokens between the prompt up to it and the dialog through it.
    None when no assistant token fits in ``max_length``."""
    def render(messages: Sequence[Mapping[str, str]], prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=prompt)
        return _ids(tokenizer, text)

    ids = render(dialog, False)
    labels = [IGNORE] * len(ids)
    for index, message in enumerate(dialog):
        if message.get("role") == "assistant":
            start, end = len(render(dialog[:index], True)), len(render(dialog[:index + 1], False))
            labels[start:end] = ids[start:end]
    example = Example(ids[:max_length], labels[:max_length])
    return example if any(label != IGNORE for label in example.labels) else None


def encode(tokenizer: Any, lines: Sequence[Line], template: Mapping[str, str] | None, chat: bool, max_length: int,
           long_prompts: LongPrompts = LongPrompts.DROP) -> Encoded:
    """Every line's example; those without room for a token to learn are counted and named."""
    encoded = Encoded()
    if chat and not all(isinstance(line.values.get("dialog"), list) for line in lines):
        raise TrainingDataError("chat_dataset=True needs lines of the form {\"dialog\": [...]}")
    if not chat and template is None and lines:
        raise TrainingDataError("instruction_tuned=True needs template.json beside train.jsonl")
    for line in lines:
        if chat:
            example = encode_chat(tokenizer, line.values["dialog"], max_length)
        else:
            assert template is not None
            example = encode_instruction(tokenizer, template, line.values, max_length, long_prompts)
        if example is None:
            encoded.dropped.append(line.where)
        else:
            encoded.examples.append(example)
            encoded.truncated += example.truncated
    return encoded
