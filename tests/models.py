"""Tiny models and datasets for the model-half tests, built on the spot (no hub, no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pvbuild.builtins.tiny import TINY_HYPERPARAMETERS, build_tiny_model
from pvbuild.services.local_training import text_fields

TEMPLATE = {"prompt": "关于光伏政策<{context}>, 提问: {question}", "completion": "{answer}"}


def instruction_lines(count: int = 16) -> list[dict[str, str]]:
    return [{"context": f"光伏政策第{i}号", "question": f"第{i}号文件对分布式光伏有什么规定？",
             "answer": f"第{i}号文件规定分布式光伏项目应当先备案再并网。"} for i in range(count)]


def chat_lines(count: int = 16) -> list[dict[str, Any]]:
    return [{"dialog": [{"role": "user", "content": line["question"]}, {"role": "assistant", "content": line["answer"]},
                        {"role": "user", "content": "还有吗？"}, {"role": "assistant", "content": "没有了。"}]}
            for line in instruction_lines(count)]


def write_channel(directory: Path, lines: list[dict[str, Any]], template: dict[str, str] | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
                                           encoding="utf-8")
    if template is not None:
        (directory / "template.json").write_text(json.dumps(template, ensure_ascii=False), encoding="utf-8")
    return directory


def build_base(directory: Path) -> Path:
    texts = text_fields(instruction_lines() + chat_lines()) + list(TEMPLATE.values())
    build_tiny_model(texts, directory, 42)
    return directory


def hyperparameters(chat: bool, **overrides: Any) -> dict[str, str]:
    values = {**TINY_HYPERPARAMETERS, "epoch": 4, "validation_split_ratio": 0.25, **overrides,
              "instruction_tuned": str(not chat), "chat_dataset": str(chat)}
    return {key: str(value) for key, value in values.items()}
