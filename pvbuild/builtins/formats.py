"""The built-in dataset formats, registered like any plugin's: JumpStart's instruction format
(``train.jsonl`` whose keys are exactly the placeholders of ``template.json``; checked line by line)
and its chat format (``{"dialog": [...]}`` lines)."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pvbuild import hookimpl
from pvbuild.config import TEMPLATE_FIELDS
from pvbuild.errors import PvbuildError
from pvbuild.plugin_types import DatasetFormat, Dialogue

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

# One encoder for every line: json.dumps with these options builds a new one per call (half the cost).
_LINE = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


def jsonl(lines: Sequence[Mapping[str, Any]]) -> str:
    encode = _LINE.encode
    return "".join(encode(line) + "\n" for line in lines)


def placeholders(template: Mapping[str, str]) -> set[str]:
    """The ``{names}`` used by the prompt and completion templates."""
    names: set[str] = set()
    for text in template.values():
        try:
            names |= {field for _, field, _, _ in string.Formatter().parse(text) if field}
        except ValueError as error:
            raise PvbuildError(f"dataset.template: {text!r} is not a valid template: {error}") from error
    return names


def check_template_lines(template: Mapping[str, str], lines: Sequence[Mapping[str, Any]], where: str) -> None:
    """Every placeholder of template.json must be a key of every line (and nothing else)."""
    wanted = placeholders(template)
    for number, line in enumerate(lines, start=1):
        if set(line) != wanted:
            missing, extra = sorted(wanted - set(line)), sorted(set(line) - wanted)
            raise PvbuildError(f"{where} line {number}: keys {sorted(line)} do not match the placeholders "
                               f"{sorted(wanted)} of template.json (missing {missing}, extra {extra})")


def instruction_lines(dialogues: Sequence[Dialogue], template: Mapping[str, str], where: str) -> list[dict[str, str]]:
    wanted = placeholders(template)
    unknown = sorted(wanted - set(TEMPLATE_FIELDS))
    if unknown:
        raise PvbuildError(f"dataset.template uses placeholders {unknown} that pvbuild cannot fill; "
                           f"use only {', '.join('{' + name + '}' for name in TEMPLATE_FIELDS)}")
    lines = []
    for dialogue in dialogues:
        for question, answer in dialogue.pairs():
            fields = {"context": dialogue.title, "question": question, "answer": answer}
            lines.append({name: fields[name] for name in TEMPLATE_FIELDS if name in wanted})
    check_template_lines(template, lines, where)
    return lines


def chat_lines(dialogues: Sequence[Dialogue], options: Mapping[str, Any]) -> list[dict[str, Any]]:
    lines = []
    for dialogue in dialogues:
        prefix = str(options["chat_user_prefix"]).format(title=dialogue.title)
        dialog = [{"role": "system", "content": options["system_prompt"]}] if options["system_prompt"] else []
        for message in dialogue.messages:
            content = prefix + message.content if message.role == "user" else message.content
            dialog.append({"role": message.role, "content": content})
        lines.append({"dialog": dialog})
    return lines


def write_instruction(train: Sequence[Dialogue], validation: Sequence[Dialogue],
                      options: Mapping[str, Any]) -> dict[str, str]:
    template = options["template"]
    files = {"template.json": json.dumps(template, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
             "train.jsonl": jsonl(instruction_lines(train, template, "train.jsonl"))}
    if validation:
        files["validation.jsonl"] = jsonl(instruction_lines(validation, template, "validation.jsonl"))
    return files


def write_chat(train: Sequence[Dialogue], validation: Sequence[Dialogue], options: Mapping[str, Any]) -> dict[str, str]:
    files = {"chat.jsonl": jsonl(chat_lines(train, options))}
    if validation:
        files["chat_validation.jsonl"] = jsonl(chat_lines(validation, options))
    return files


INSTRUCTION = DatasetFormat(
    "instruction", "instruction_tuned",
    {"training": ("train.jsonl", "template.json"), "validation": ("validation.jsonl", "template.json")},
    write_instruction, "JumpStart instruction tuning: train.jsonl + template.json")
CHAT = DatasetFormat(
    "chat", "chat_dataset", {"training": ("chat.jsonl",), "validation": ("chat_validation.jsonl",)},
    write_chat, 'JumpStart chat fine-tuning: {"dialog": [...]} lines')
BUILTIN_FORMATS = (INSTRUCTION, CHAT)


@hookimpl
def register_dataset_formats(register: Callable[[DatasetFormat], None]) -> None:
    for dataset_format in BUILTIN_FORMATS:
        register(dataset_format)
