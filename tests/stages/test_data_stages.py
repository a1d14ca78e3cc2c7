"""The data stages one at a time, on a committed tree (built by pvbuild 0.1, kept as a fixture):
items, their own reasons to rebuild, and the explicit adoption of hand edits. Nothing is crawled
or annotated here; the scenario tests (test_crawl, test_annotate, test_incremental) do that."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from pvbuild.config import load_config
from pvbuild.engine import staleness
from pvbuild.engine.outcomes import Failure, StageResult, save_failures
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.stages import conversations, dataset, gate, markdown, prune, report, urls

LANDED = Path(__file__).resolve().parent.parent / "fixtures" / "landed-0.1" / "artifacts"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PVBUILD_QUIET", "1")
    monkeypatch.delenv("PVBUILD_PROFILE", raising=False)
    shutil.copytree(LANDED, tmp_path / "artifacts")
    return tmp_path


def workspace(project: Path, config: str = "") -> Workspace:
    if config:
        (project / "pvbuild.toml").write_text(config, encoding="utf-8")
    return Workspace(load_config(project), live=False)


def test_every_data_stage_is_up_to_date_on_the_committed_tree(tree: Path) -> None:
    for stage in (urls.STAGE, prune.STAGE, markdown.STAGE, conversations.STAGE, dataset.STAGE, gate.STAGE):
        assert staleness.stale(workspace(tree), stage) == [], stage.name


def test_urls_are_due_again_after_refresh_hours(tree: Path) -> None:
    config = "[profile.default.sources.sample]\nfirst_page = 1\nlast_page = 2\nrefresh_hours = 1.0\n"
    cache = tree / ".pvbuild" / "default"
    cache.mkdir(parents=True)
    (cache / "last-list-crawl").write_text(str(time.time() - 7200), encoding="utf-8")
    stale = staleness.stale(workspace(tree, config), urls.STAGE)
    assert stale and "lists last crawled 2.0 h ago" in stale[0].reason
    (cache / "last-list-crawl").write_text(str(time.time()), encoding="utf-8")
    assert staleness.stale(workspace(tree, config), urls.STAGE) == []


def test_a_hand_edited_markdown_is_taken_as_built_and_its_conversation_follows(tree: Path) -> None:
    page = sorted((tree / "artifacts/default/markdown").glob("*.md"))[0]
    page.write_text(page.read_text(encoding="utf-8") + "\n补充。\n", encoding="utf-8")
    assert staleness.stale(workspace(tree), markdown.STAGE)[0].reason == "output edited since it was built"
    current = workspace(tree)
    assert staleness.adopt_edits(current, markdown.STAGE) == []  # nothing left to crawl
    current.finish("markdown")
    assert staleness.stale(workspace(tree), markdown.STAGE) == []
    stale = staleness.stale(workspace(tree), conversations.STAGE)
    assert [(entry.item.key, entry.reason) for entry in stale] == [(page.stem, "input changed: markdown")]


def test_a_key_found_stale_is_examined_again_by_every_pass_until_it_is_rebuilt(tree: Path) -> None:
    """A pass remembers what it saw (a machine-local memo, so the next pass examines only what changed
    since) even when something is stale: the stale key is marked, not taken as up to date."""
    first, second = sorted((tree / "artifacts/default/markdown").glob("*.md"))[:2]
    first.write_text(first.read_text(encoding="utf-8") + "\n补充。\n", encoding="utf-8")
    for _ in range(2):  # the second pass reads the memo the first one left
        assert [entry.item.key for entry in staleness.stale(workspace(tree), markdown.STAGE)] == [first.stem]
    second.write_text(second.read_text(encoding="utf-8") + "\n补充。\n", encoding="utf-8")
    assert sorted(entry.item.key for entry in staleness.stale(workspace(tree), markdown.STAGE)) == sorted(
        [first.stem, second.stem])
    current = workspace(tree)
    assert staleness.adopt_edits(current, markdown.STAGE) == []
    current.finish("markdown")
    assert staleness.stale(workspace(tree), markdown.STAGE) == []


def test_a_retitled_row_makes_its_markdown_and_conversation_stale(tree: Path) -> None:
    table = tree / "artifacts/default/urls.csv"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    key = lines[1].split(",")[3]
    lines[1] = lines[1].replace(",", "（修订）,", 1)
    table.write_text("".join(lines), encoding="utf-8")
    current = workspace(tree)
    staleness.adopt_edits(current, urls.STAGE)
    current.finish("urls")
    assert [entry.item.key for entry in staleness.stale(workspace(tree), markdown.STAGE)] == [key]
    assert [(e.item.key, e.reason) for e in staleness.stale(workspace(tree), conversations.STAGE)] == [
        (key, "input changed: row")]


def test_an_edited_dataset_file_is_rebuilt_without_changing_what_follows(tree: Path) -> None:
    (tree / "artifacts/default/dataset/chat.jsonl").write_text("{}\n", encoding="utf-8")
    stale = staleness.stale(workspace(tree), dataset.STAGE)
    assert "dataset file chat.jsonl missing or edited" in stale[0].reason and not stale[0].propagates


def test_prune_names_orphans_and_their_records_and_removes_them(tree: Path) -> None:
    table = tree / "artifacts/default/urls.csv"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    key = lines[1].split(",")[3]
    table.write_text("".join([lines[0], *lines[2:]]), encoding="utf-8")
    found = staleness.stale(workspace(tree), prune.STAGE)
    assert {(entry.owner, Path(entry.item.file).name) for entry in found} == {
        ("markdown", f"{key}.md"), ("conversations", f"{key}.csv"), ("markdown", "markdown.json"),
        ("conversations", "conversations.json")}
    assert not any(entry.derived for entry in found)  # the table is not about to be crawled again
    prune.STAGE.run(workspace(tree))
    assert staleness.stale(workspace(tree), prune.STAGE) == []
    assert key not in json.loads((tree / "artifacts/default/.state/markdown.json").read_text(encoding="utf-8"))


def test_prune_drops_the_identities_only_the_pruned_records_held(tree: Path) -> None:
    """A clean build holds in identities.json only what some record refers to: once every article is gone
    from the table, prune's dropped records take the crawler's and the annotator's identities with them."""
    state = tree / "artifacts/default/.state"
    table = tree / "artifacts/default/urls.csv"
    table.write_text(table.read_text(encoding="utf-8").splitlines(keepends=True)[0], encoding="utf-8")
    per_article = {record["inputs"][name] for stage, name in (("markdown", "crawler"), ("conversations", "annotator"))
                   for record in json.loads((state / f"{stage}.json").read_text(encoding="utf-8")).values()}
    prune.STAGE.run(workspace(tree))
    kept = json.loads((state / "identities.json").read_text(encoding="utf-8"))
    referenced = {value for path in state.glob("*.json") if path.name != "identities.json"
                  for record in json.loads(path.read_text(encoding="utf-8")).values()
                  for value in record.get("inputs", {}).values()}
    assert per_article and not per_article & kept.keys() and kept and kept.keys() <= referenced


def test_the_gate_lists_failures_that_are_still_stale_and_fails(tree: Path) -> None:
    page = sorted((tree / "artifacts/default/markdown").glob("*.md"))[0]
    page.unlink()
    result = StageResult("markdown", failures=[Failure(page.stem, "http://x.invalid/a.shtml", "HTTP 404")])
    save_failures(tree / ".pvbuild" / "default", result)
    stale = staleness.stale(workspace(tree), gate.STAGE)
    assert [entry.reason for entry in stale] == [f"markdown: {page.stem} (http://x.invalid/a.shtml): HTTP 404"]
    with pytest.raises(PvbuildError, match="1 item\\(s\\) failed"):
        gate.STAGE.run(workspace(tree))


def test_the_report_of_a_0_1_tree_is_up_to_date(tree: Path) -> None:
    assert staleness.stale(workspace(tree), report.STAGE) == []
