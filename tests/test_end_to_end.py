"""The README's commands: `doit` in the project root (default profile, offline), `pvbuild ask`,
`pvbuild teardown`, as a user runs them, in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, Project

CHAIN = ["urls", "prune", "markdown", "conversations", "dataset", "data", "upload", "train", "package", "evaluate",
         "deploy", "report"]


def run(project: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVBUILD_")}
    return subprocess.run([sys.executable, "-m", *command], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)


def test_doit_runs_the_whole_chain_offline_then_does_nothing(project: Project) -> None:
    first = run(project.path, "doit")
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        artifacts = project.artifacts("default")
        assert len((artifacts / "urls.csv").read_text(encoding="utf-8").splitlines()) == 13
        assert len(list((artifacts / "markdown").glob("*.md"))) == 12
        assert len(list((artifacts / "conversations").glob("*.csv"))) == 12
        for name in ("train.jsonl", "template.json", "chat.jsonl", "conversations.jsonl", "validation.jsonl",
                     "arrow/dataset_dict.json", "manifest.json"):
            assert (artifacts / "dataset" / name).is_file(), name
        for name in ("upload.json", "training.json", "model.json", "endpoint.json", "report/report.html",
                     "report/loss.png"):
            assert (artifacts / name).is_file(), name
        assert "markdown: 12 built" in first.stderr and "conversations: 12 built" in first.stderr
        assert "step(s) ran" in first.stdout and "in " in first.stdout.splitlines()[-1]  # how long it took

        second = run(project.path, "doit")
        assert second.returncode == 0
        assert second.stdout.splitlines()[:-1] == [f"-- {stage}" for stage in CHAIN]
        assert "pvbuild: 0 step(s) ran, 12 up to date" in second.stdout
        assert "built" not in second.stderr

        answer = run(project.path, "pvbuild", "ask", "分布式光伏项目如何申请补贴？")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() or "answer was empty" in answer.stderr
    finally:
        down = run(project.path, "pvbuild", "teardown")
    assert down.returncode == 0 and "torn down" in down.stdout
    endpoint = json.loads((project.artifacts("default") / "endpoint.json").read_text(encoding="utf-8"))
    assert endpoint["status"] == "Deleted"
    after = run(project.path, "pvbuild", "ask", "还在吗？")
    assert after.returncode == 2 and "Deleted" in after.stderr and "run doit" in after.stderr


def readme_commands() -> list[str]:
    """The commented command block after the README's first `doit`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("A second `doit` runs no action. Then:", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line.strip()]


def test_the_readme_sequence_does_what_its_comments_say(project: Project) -> None:
    commands = readme_commands()
    assert [c.split("#")[0].split()[:2] for c in commands] == [
        ["pvbuild", "check"], ["pvbuild", "ask"], ["pvbuild", "teardown"], ["pvbuild", "check"], ["doit"]]
    assert "exit 0" in commands[0] and "exit 1" in commands[3]
    assert run(project.path, "doit").returncode == 0
    try:
        assert run(project.path, "pvbuild", "check").returncode == 0
        assert run(project.path, "pvbuild", "ask", "分布式光伏项目如何申请补贴？").returncode == 0
        assert run(project.path, "pvbuild", "teardown").returncode == 0
        stale = run(project.path, "pvbuild", "check")
        assert stale.returncode == 1 and "deploy:" in stale.stdout and "is Deleted" in stale.stdout
        again = run(project.path, "doit")
        assert again.returncode == 0 and [line for line in again.stdout.splitlines() if line.startswith(".")] == [
            ".  deploy"]
        assert run(project.path, "pvbuild", "check").returncode == 0
    finally:
        run(project.path, "pvbuild", "teardown")


def test_the_readme_gitignore_keeps_artifacts_committed(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    gitignore = readme.split("```gitignore\n", 1)[1].split("```", 1)[0]
    (tmp_path / ".gitignore").write_text(gitignore, encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    paths = ["artifacts/default/urls.csv", "artifacts/default/.state/markdown.json", ".pvbuild/default/x"]
    ignored = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", *paths], capture_output=True, text=True)
    assert ignored.stdout.split() == [".pvbuild/default/x"]
