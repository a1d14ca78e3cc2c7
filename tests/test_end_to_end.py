"""The README's run command: `doit` in the project root, default profile, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Project


def doit(project: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVBUILD_")}
    return subprocess.run([sys.executable, "-m", "doit"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


def test_doit_builds_every_data_artifact_then_does_nothing(project: Project) -> None:
    first = doit(project.path)
    assert first.returncode == 0, first.stdout + first.stderr
    artifacts = project.artifacts("default")
    assert len((artifacts / "urls.csv").read_text(encoding="utf-8").splitlines()) == 13
    assert len(list((artifacts / "markdown").glob("*.md"))) == 12
    assert len(list((artifacts / "conversations").glob("*.csv"))) == 12
    for name in ("train.jsonl", "template.json", "chat.jsonl", "conversations.jsonl", "validation.jsonl",
                 "arrow/dataset_dict.json", "manifest.json"):
        assert (artifacts / "dataset" / name).is_file(), name
    assert "markdown: 12 built" in first.stderr and "conversations: 12 built" in first.stderr

    second = doit(project.path)
    assert second.returncode == 0
    assert second.stdout.split() == ["--", "urls", "--", "markdown", "--", "conversations", "--", "dataset",
                                     "--", "report"]
    assert "built" not in second.stderr
