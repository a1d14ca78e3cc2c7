"""The dataset: formats, the template placeholder check, the split, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pvbuild.builtins.formats import check_template_lines
from pvbuild.engine.url_table import UrlRow
from pvbuild.errors import PvbuildError
from pvbuild.plugin_types import Message
from pvbuild.stages.dataset_files import Conversation, split, write_dataset
from tests.conftest import Project

OPTIONS: dict[str, Any] = {
    "format": "instruction", "validation_ratio": 0.25, "seed": 7, "system_prompt": "",
    "chat_user_prefix": "关于光伏政策<{title}>, 用户提问: ",
    "template": {"prompt": "关于光伏政策<{context}>, 提问: {question}", "completion": "{answer}"}}


def conversations(count: int) -> list[Conversation]:
    return [Conversation(UrlRow(f"标题{i}", f"https://a.cn/{i}.shtml", "2025-01-01", str(i), "bjx"),
                         [Message("user", f"问{i}a"), Message("assistant", f"答{i}a"),
                          Message("user", f"问{i}b"), Message("assistant", f"答{i}b")]) for i in range(count)]


def test_formats_and_placeholders(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, conversations(4), OPTIONS)
    assert manifest["train_articles"] == 3 and manifest["validation_articles"] == 1 and manifest["pairs"] == 8
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(set(line) == {"context", "question", "answer"} for line in train)
    assert json.loads((tmp_path / "template.json").read_text(encoding="utf-8")) == OPTIONS["template"]
    dialog = json.loads((tmp_path / "chat.jsonl").read_text(encoding="utf-8").splitlines()[0])["dialog"]
    assert [turn["role"] for turn in dialog] == ["user", "assistant", "user", "assistant"]
    assert dialog[0]["content"].startswith("关于光伏政策<标题")
    import datasets

    loaded = datasets.load_from_disk(str(tmp_path / "arrow"))
    assert loaded["train"].num_rows == 3 and loaded["validation"].num_rows == 1
    assert loaded["train"][0]["messages"][0]["role"] == "user"


def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_dataset(tmp_path / name, conversations(5), OPTIONS)
    files_a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    files_b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert files_a == files_b


def test_split_is_by_article_and_stable() -> None:
    train, validation = split(conversations(10), 0.2, 42)
    assert len(validation) == 2 and not {c.row.file_id for c in train} & {c.row.file_id for c in validation}
    _, again = split(conversations(11), 0.2, 42)
    assert {c.row.file_id for c in validation} <= {c.row.file_id for c in again} | {"10"}


def test_placeholder_mismatch_names_the_line() -> None:
    with pytest.raises(PvbuildError, match=r"train.jsonl line 2: keys \['answer', 'question'\] do not match"):
        check_template_lines(OPTIONS["template"], [{"context": "c", "question": "q", "answer": "a"},
                                                   {"question": "q", "answer": "a"}], "train.jsonl")


def test_template_with_unfillable_placeholder_fails_the_build(project: Project) -> None:
    project.config('[profile.test.dataset]\ntemplate = { prompt = "{instruction}", completion = "{answer}" }')
    assert project.build() == 1
    assert not (project.artifacts() / "dataset").exists()  # no partial dataset
