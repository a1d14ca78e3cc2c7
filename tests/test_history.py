"""``pvbuild history``: the committed builds' numbers from git, what each build changed, and the HTML page."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pvbuild.cli import main
from pvbuild.history import write_sidecar
from tests.test_diff import git, write_metrics

COMMIT = ["-c", "user.email=a@b.c", "-c", "user.name=a", "commit", "-q", "-m"]


def commit_build(project: Path, metrics: dict[str, object], message: str) -> None:
    write_metrics(project, metrics)
    git(project, "add", "-A")
    git(project, *COMMIT, message)


def test_history_lists_each_build_and_what_it_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    git(tmp_path, "init", "-q")
    commit_build(tmp_path, {"data.pairs": 70, "training.validation_loss": 5.75, "candidates.a.selected": True},
                 "first build")
    git(tmp_path, *COMMIT, "unrelated", "--allow-empty")  # a commit that did not touch the metrics: not a build
    commit_build(tmp_path, {"data.pairs": 80, "training.validation_loss": 5.5, "candidates.a.selected": False},
                 "more articles")
    write_metrics(tmp_path, {"data.pairs": 80, "training.validation_loss": 5.25, "candidates.a.selected": False})

    capsys.readouterr()
    assert main(["--project", str(tmp_path), "history", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["subject"] for row in rows] == ["first build", "more articles", "not committed"]
    assert rows[-1]["revision"] == "workspace" and rows[0]["changed"] == []
    assert {c["metric"]: (c["old"], c["new"]) for c in rows[1]["changed"]} == {
        "data.pairs": (70, 80), "training.validation_loss": (5.75, 5.5), "candidates.a.selected": (True, False)}
    selected = next(c for c in rows[1]["changed"] if c["metric"] == "candidates.a.selected")
    assert "change" not in selected  # a flag has no numeric change

    assert main(["--project", str(tmp_path), "history"]) == 0
    printed = capsys.readouterr().out
    assert "more articles\n  candidates.a.selected: True -> False\n  data.pairs: 70 -> 80 (+14.3%)" in printed
    assert "workspace  not committed\n  training.validation_loss: 5.5 -> 5.25 (-4.5%)" in printed

    page = tmp_path / "history.html"
    assert main(["--project", str(tmp_path), "history", "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "What the last build changed" in text and "data:image/png;base64," in text
    assert text.count('class="changed"') == 4  # pairs and loss at the second build, the loss again in the workspace
    assert not any(path.name.endswith(".json") for path in (tmp_path / "artifacts").rglob("history*"))
    # Each history command also writes the script that shows the same sections in the report.
    script = (tmp_path / ".pvbuild" / "default" / "history.js").read_text(encoding="utf-8")
    assert script.startswith("// Written by pvbuild") and "Read from git on " in script
    assert "What the last build changed (" in script and "more articles" in script


def test_the_report_script_without_git_shows_the_last_build(tmp_path: Path) -> None:
    write_metrics(tmp_path, {"data.pairs": 80})
    target = tmp_path / ".pvbuild" / "default" / "history.js"
    assert write_sidecar(tmp_path, tmp_path / "artifacts" / "default" / "report" / "metrics.json", target) == 1
    script = target.read_text(encoding="utf-8")
    assert "No git history (git log -- artifacts/default/report/metrics.json: " in script
    assert "<th>data.pairs</th>" in script and "one build only" in script


def test_history_outside_git_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--project", str(tmp_path), "history"]) == 2
    assert "git log" in capsys.readouterr().err


def test_history_without_builds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["git", "-C", str(tmp_path), "init", "-q"], check=True)
    capsys.readouterr()
    assert main(["--project", str(tmp_path), "history"]) == 0
    assert "no build has committed report/metrics.json yet" in capsys.readouterr().out
