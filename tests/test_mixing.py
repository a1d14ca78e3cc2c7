"""Mixing general data into the dataset (``dataset.mix_file``, ``dataset.mix_ratio``): seeded, recorded in
the manifest, in the training channel; a new ratio rewrites the general files and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pvbuild.cli import main
from tests.conftest import Project

MIX = '[profile.test.dataset]\nmix_file = "{file}"\nmix_ratio = {ratio}\n'


def manifest(project: Project) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((project.artifacts() / "dataset" / "manifest.json").read_text("utf-8"))
    return loaded


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_general_lines_join_the_training_data_at_the_declared_ratio(project: Project) -> None:
    project.config(MIX.format(file="builtin:general-zh", ratio=0.2))
    assert project.build() == 0
    dataset = project.artifacts() / "dataset"
    found = manifest(project)["mix"]
    train, chat = lines(dataset / "train.jsonl"), lines(dataset / "chat.jsonl")
    assert found["domain_lines"] == {"instruction": len(train), "chat": len(chat)}
    general = lines(dataset / "train-general.jsonl")
    assert len(general) == found["general_lines"]["instruction"] == min(32, round(len(train) * 0.2 / 0.8))
    assert all(line["context"] == "" and line["question"] and line["answer"] for line in general)
    chat_general = lines(dataset / "chat-general.jsonl")
    assert chat_general[0]["dialog"][0]["role"] == "user"
    assert not chat_general[0]["dialog"][0]["content"].startswith("关于光伏政策")  # no article prefix
    assert "train-general.jsonl" in manifest(project)["files"] and found["available"] == 32
    domain = {name: (dataset / name).read_bytes() for name in ("train.jsonl", "chat.jsonl", "validation.jsonl")}
    conversations = (project.artifacts() / ".state" / "conversations.json").read_bytes()

    project.config(MIX.format(file="builtin:general-zh", ratio=0.1))  # a new ratio: the mix alone changes
    assert project.build() == 0
    assert len(lines(dataset / "train-general.jsonl")) == min(32, round(len(train) * 0.1 / 0.9)) < len(general)
    assert {name: (dataset / name).read_bytes() for name in domain} == domain
    assert (project.artifacts() / ".state" / "conversations.json").read_bytes() == conversations

    assert project.build("upload") == 0  # the training channel holds the general file beside the domain file
    channel = json.loads((project.artifacts() / "upload.json").read_text("utf-8"))["channels"]["training"]
    store_dir = project.path / ".pvbuild" / "object-store"
    uploaded = sorted(path.name for path in store_dir.rglob("*") if path.is_file() and path.parent.name == "training")
    assert "train-general.jsonl" in uploaded and "train.jsonl" in uploaded and channel.endswith("/training/")

    project.config("[profile.test]\n")  # the mix removed: its files go, the domain files stay
    assert project.build() == 0
    assert not (dataset / "train-general.jsonl").exists() and "mix" not in manifest(project)
    assert main(["--project", str(project.path), "check", "--profile", "test", "--until", "data"]) == 0


@pytest.mark.parametrize(("content", "message"), [
    ('{"question": "q"}\n', r"general.jsonl:1: a general row needs"),
    ('{"question": "q", "answer": "a"}\nnot json\n', r"general.jsonl:2: not a JSON object"),
])
def test_a_bad_general_row_is_named_by_line(project: Project, content: str, message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (project.path / "general.jsonl").write_text(content, encoding="utf-8")
    project.config(MIX.format(file="general.jsonl", ratio=0.2))
    assert project.build() != 0
    captured = capsys.readouterr()
    assert message.replace("\\", "") in captured.out + captured.err


def test_a_csv_general_set_and_a_missing_file(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (project.path / "general.csv").write_text("question,answer\n你好吗？,我很好。\n今天星期几？,今天星期三。\n",
                                              encoding="utf-8")
    project.config(MIX.format(file="general.csv", ratio=0.5))
    assert project.build() == 0
    assert len(lines(project.artifacts() / "dataset" / "train-general.jsonl")) == 2  # all there is
    project.config(MIX.format(file="gone.csv", ratio=0.5))  # refused before anything runs
    assert main(["--project", str(project.path), "check", "--profile", "test"]) == 2
    assert "dataset.mix_file: gone.csv: no such file" in capsys.readouterr().err
    project.config(MIX.format(file="builtin:general-en", ratio=0.5))
    assert main(["--project", str(project.path), "check", "--profile", "test"]) == 2
    assert "shipped: builtin:general-zh" in capsys.readouterr().err
