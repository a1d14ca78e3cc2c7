"""``check`` on a fresh git clone takes the digests of files git vouches for from the records, reading none
of them, and reads every file git cannot vouch for: changed, assume-unchanged, or converted on checkout."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvbuild.check import check
from pvbuild.config import load_config
from pvbuild.engine.workspace import Workspace
from tests.conftest import Project, site_and_llm_config
from tests.standins import FakeOpenAI, FixtureSite


def git(directory: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture
def committed(project: Project, site: FixtureSite, llm: FakeOpenAI) -> Iterator[Project]:
    site.pages[1][1].missing = False  # every article exists
    project.config(site_and_llm_config(site, llm))
    assert project.build() == 0
    (project.path / ".gitignore").write_text(".pvbuild/\n__pycache__/\n", encoding="utf-8")
    git(project.path, "init", "-q")
    git(project.path, "add", "-A")
    git(project.path, "commit", "-qm", "built")
    yield project


def fresh_clone(project: Project, tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project.path), str(clone))
    return clone


def check_clone(clone: Path) -> tuple[list[str], set[str]]:
    """The stale keys, and the per-article files the check read (those it has stat-cache entries for)."""
    workspace = Workspace(load_config(clone, "test"), live=False)
    stale = [finding.key for finding in check(workspace, "data") if not finding.excused]
    read = {key for key in workspace.hasher.entries if "/markdown/" in key or "/conversations/" in key}
    return stale, read


def test_a_fresh_clone_is_up_to_date_without_reading_a_per_article_file(committed: Project, tmp_path: Path) -> None:
    clone = fresh_clone(committed, tmp_path)
    stale, read = check_clone(clone)
    assert stale == [] and read == set()
    assert check_clone(clone) == ([], set())  # the next check asks git again, rather than reading them all


def test_a_file_changed_after_the_clone_is_read_and_found_edited(committed: Project, tmp_path: Path) -> None:
    clone = fresh_clone(committed, tmp_path)
    markdown = clone / "artifacts" / "test" / "markdown" / "1455093.md"
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n补充一句。\n", encoding="utf-8")
    stale, read = check_clone(clone)
    assert "1455093" in stale and read == {"artifacts/test/markdown/1455093.md"}


def test_assume_unchanged_is_not_trusted(committed: Project, tmp_path: Path) -> None:
    clone = fresh_clone(committed, tmp_path)
    name = "artifacts/test/conversations/1455200.csv"
    git(clone, "update-index", "--assume-unchanged", name)
    (clone / name).write_text("role,content\nuser,改过的问题\nassistant,改过的回答\n", encoding="utf-8")
    stale, read = check_clone(clone)
    assert "1455200" in stale and name in read


def test_files_that_checkout_may_convert_are_read(committed: Project, tmp_path: Path) -> None:
    (committed.path / ".gitattributes").write_text("*.md text eol=crlf\n", encoding="utf-8")
    git(committed.path, "add", ".gitattributes")
    git(committed.path, "commit", "-qm", "attributes")
    clone = fresh_clone(committed, tmp_path)
    stale, read = check_clone(clone)
    # Checked out with CRLF line ends: every markdown file differs from what was built, and is read.
    edited = {f"artifacts/test/markdown/{key}.md" for key in stale if key.isdigit()}
    assert {key for key in read if key.endswith(".md")} == edited and len(edited) == 5
    assert not any(key.endswith(".csv") for key in read)  # no attribute on them: trusted


def test_autocrlf_turns_the_shortcut_off(committed: Project, tmp_path: Path) -> None:
    clone = fresh_clone(committed, tmp_path)
    git(clone, "config", "core.autocrlf", "true")
    stale, read = check_clone(clone)
    assert stale == [] and len(read) == 10  # five markdown files and five conversations, all read
