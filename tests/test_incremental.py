"""Exact, incremental rebuilds through doit: only what changed is crawled and annotated."""

from __future__ import annotations

import pytest

from tests.conftest import Project, site_and_llm_config
from tests.standins import FakeOpenAI, FixtureArticle, FixtureSite


@pytest.fixture
def built(project: Project, site: FixtureSite, llm: FakeOpenAI) -> Project:
    site.pages[1][1].missing = False  # every article exists
    project.config(site_and_llm_config(site, llm))
    assert project.build() == 0
    assert len(llm.calls) == 5
    return project


def article_requests(site: FixtureSite) -> dict[str, int]:
    return {path: count for path, count in site.requests.items() if path.endswith(".shtml")}


def snapshot(project: Project) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in project.artifacts().rglob("*") if p.is_file()}


def test_nothing_changed_runs_nothing(built: Project, site: FixtureSite, llm: FakeOpenAI,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    before, requests, calls = snapshot(built), dict(site.requests), len(llm.calls)
    capfd.readouterr()
    assert built.build() == 0
    err = capfd.readouterr().err
    assert "built" not in err  # no stage action ran (each prints its summary when it runs)
    assert snapshot(built) == before and site.requests == requests and len(llm.calls) == calls


def test_one_new_article_costs_one_crawl_and_one_annotation(built: Project, site: FixtureSite,
                                                            llm: FakeOpenAI) -> None:
    requests, calls = article_requests(site), len(llm.calls)
    new = FixtureArticle("1456000", "新发布的储能配置政策", "2025-08-10", ["新建项目按15%配置储能。"], day="20250810")
    site.pages[0].insert(0, new)
    assert built.build("-a", "urls") == 0  # force the list crawl (or set refresh_hours)
    assert built.build() == 0
    crawled = {path: n - requests.get(path, 0) for path, n in article_requests(site).items()}
    assert {path: n for path, n in crawled.items() if n} == {new.path: 1}
    annotated = [call["messages"][-1]["content"] for call in llm.calls[calls:]]
    assert len(annotated) == 1 and "新发布的储能配置政策" in annotated[0]
    assert "储能配置" in (built.artifacts() / "dataset" / "train.jsonl").read_text(encoding="utf-8")


def test_edited_prompt_reannotates_everything_and_recrawls_nothing(built: Project, site: FixtureSite,
                                                                   llm: FakeOpenAI) -> None:
    requests, calls = dict(site.requests), len(llm.calls)
    built.config(site_and_llm_config(site, llm, extra='prompt = "只输出 JSON。新的提示词。"'))
    assert built.build() == 0
    assert site.requests == requests
    assert len(llm.calls) - calls == 5
    assert all(call["messages"][0]["content"] == "只输出 JSON。新的提示词。" for call in llm.calls[calls:])


def test_runtime_options_change_nothing(built: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    requests, calls = dict(site.requests), len(llm.calls)
    built.config(site_and_llm_config(site, llm, extra="concurrency = 2\ntimeout = 30.0"))
    assert built.build() == 0
    assert site.requests == requests and len(llm.calls) == calls


def test_one_edited_markdown_reannotates_one_article(built: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    requests, calls = dict(site.requests), len(llm.calls)
    markdown = built.artifacts() / "markdown" / "1455200.md"
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n补充：手工加入的一段。\n", encoding="utf-8")
    assert built.build() == 0
    assert site.requests == requests
    annotated = [call["messages"][-1]["content"] for call in llm.calls[calls:]]
    assert len(annotated) == 1 and "手工加入的一段" in annotated[0]


def test_hand_edited_conversation_is_kept_and_used(built: Project, llm: FakeOpenAI) -> None:
    calls = len(llm.calls)
    conversation = built.artifacts() / "conversations" / "1455093.csv"
    conversation.write_text("role,content\nuser,手改的问题\nassistant,手改的回答\n", encoding="utf-8")
    assert built.build() == 0
    assert len(llm.calls) == calls  # like make: an edited intermediate is not rebuilt
    assert "手改的回答" in (built.artifacts() / "dataset" / "conversations.jsonl").read_text(encoding="utf-8")


def test_edited_or_deleted_dataset_file_is_rebuilt(built: Project, llm: FakeOpenAI) -> None:
    train = built.artifacts() / "dataset" / "train.jsonl"
    original = train.read_bytes()
    train.write_text("{}\n", encoding="utf-8")
    (built.artifacts() / "dataset" / "template.json").unlink()
    assert built.build() == 0
    assert train.read_bytes() == original
    assert (built.artifacts() / "dataset" / "template.json").is_file()


def test_deleted_conversation_is_annotated_again(built: Project, llm: FakeOpenAI) -> None:
    calls = len(llm.calls)
    (built.artifacts() / "conversations" / "1455093.csv").unlink()
    assert built.build() == 0
    assert len(llm.calls) - calls == 1


def test_doit_runs_in_one_process_see_the_edits_made_between_them(built: Project, llm: FakeOpenAI,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests doit's up-to-date checks remember (each file is looked at once per run) last one run."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    from pvbuild import tasks

    monkeypatch.chdir(built.path)
    monkeypatch.setenv("PVBUILD_PROFILE", "test")
    namespace = {**tasks.stage_tasks(), "DOIT_CONFIG": tasks.DOIT_CONFIG}
    calls = len(llm.calls)
    assert DoitMain(ModuleTaskLoader(namespace)).run(["data"]) == 0
    assert len(llm.calls) == calls
    markdown = built.artifacts() / "markdown" / "1455200.md"
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n补充：两次运行之间加入。\n", encoding="utf-8")
    assert DoitMain(ModuleTaskLoader(namespace)).run(["data"]) == 0
    annotated = [call["messages"][-1]["content"] for call in llm.calls[calls:]]
    assert len(annotated) == 1 and "两次运行之间加入" in annotated[0]


def test_a_reannotation_that_changes_no_bytes_leaves_the_dataset_alone(built: Project, llm: FakeOpenAI) -> None:
    """The fake LLM's conversation depends on the title only: a body edit re-annotates to the same bytes."""
    dataset = {path: stamp for path, stamp in snapshot(built).items() if "/dataset/" in path}
    markdown = built.artifacts() / "markdown" / "1455200.md"
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n正文的补充。\n", encoding="utf-8")
    calls = len(llm.calls)
    assert built.build() == 0
    assert len(llm.calls) - calls == 1
    assert {path: stamp for path, stamp in snapshot(built).items() if "/dataset/" in path} == dataset
