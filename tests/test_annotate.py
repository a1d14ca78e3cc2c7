"""The openai annotator through the real openai client against a local OpenAI-compatible server."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Project, site_and_llm_config
from tests.standins import FakeOpenAI, FixtureSite

GBK_TITLE = "光伏治沙"  # a marker in one article's message
OTHER_IDS = ["1455093", "1455200", "1455500"]


def conversations(project: Project) -> dict[str, str]:
    directory = project.artifacts() / "conversations"
    return {p.stem: p.read_text(encoding="utf-8") for p in directory.glob("*.csv")} if directory.is_dir() else {}


def no_empty_csv(project: Project) -> None:
    for name, text in conversations(project).items():
        assert text.count("\n") >= 3, f"{name}.csv has no conversation"


def test_success_writes_alternating_csv_and_records_usage(project: Project, site: FixtureSite,
                                                          llm: FakeOpenAI) -> None:
    project.config(site_and_llm_config(site, llm))
    project.build()
    written = conversations(project)
    assert sorted(written) == sorted([*OTHER_IDS, "1455301"])
    lines = written["1455093"].splitlines()
    assert lines[0] == "role,content" and lines[1].startswith("user,") and lines[2].startswith("assistant,")
    records = json.loads((project.artifacts() / ".state" / "conversations.json").read_text(encoding="utf-8"))
    assert records["1455093"]["usage"] == {"completion_tokens": 50, "prompt_tokens": 100, "total_tokens": 150}
    request = llm.calls[0]
    assert request["model"] == "gpt-4o" and request["response_format"]["type"] == "json_schema"
    system, user = request["messages"]
    assert system["role"] == "system" and "数据标注专家" in system["content"]  # fixed instructions first
    assert user["content"].startswith("标题：") and "正文" in user["content"]  # the article last
    assert len({call["messages"][0]["content"] for call in llm.calls}) == 1  # a shared, cacheable prefix


def test_429_then_success_is_retried(project: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    llm.script[GBK_TITLE] = ["429", "429"]
    project.config(site_and_llm_config(site, llm))
    project.build()
    assert "1455301" in conversations(project)
    assert sum(GBK_TITLE in call["messages"][-1]["content"] for call in llm.calls) == 3


@pytest.mark.parametrize("fault", ["500", "invalid_json", "wrong_roles", "empty"])
def test_a_failing_article_writes_nothing_and_is_retried_next_run(project: Project, site: FixtureSite,
                                                                  llm: FakeOpenAI, fault: str) -> None:
    llm.script[GBK_TITLE] = [fault] * 10
    project.config(site_and_llm_config(site, llm))
    assert project.build() == 1
    written = conversations(project)
    assert "1455301" not in written and sorted(written) == sorted(OTHER_IDS)  # the others proceed
    no_empty_csv(project)
    llm.script[GBK_TITLE] = []
    calls_before = len(llm.calls)
    site.pages[1][1].missing = False  # the dead link comes back: asked for by --retry-failed
    assert project.build("--retry-failed", "data") == 0
    assert "1455301" in conversations(project)
    retried = [call["messages"][-1]["content"] for call in llm.calls[calls_before:]]
    assert sum(GBK_TITLE in text for text in retried) == 1  # only the failed (and new) articles
    assert not any("上半年全国光伏" in text for text in retried)


def test_insufficient_quota_stops_the_stage(project: Project, site: FixtureSite, llm: FakeOpenAI,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    llm.script["标题"] = ["quota"]  # the first call of any article
    project.config(site_and_llm_config(site, llm, extra="concurrency = 1"))
    assert project.build() == 1
    assert conversations(project) == {}
    assert len(llm.calls) == 1  # fail fast: no retries, no other article attempted
    err = capsys.readouterr().err
    assert "failed, will retry next run: 4 items (" in err and "(3 not attempted after it)" in err
    assert err.count("no quota left") == 1, "one line for the four articles"
    assert "sk-test-secret" not in err
    # Had the dataset step run, its error would have said why there is nothing to build from:
    from pvbuild.config import load_config
    from pvbuild.engine.workspace import Workspace
    from pvbuild.stages.dataset import no_conversations

    message = no_conversations(Workspace(load_config(project.path, "test")))
    assert message.startswith("no conversations to build a dataset from: all 4 article(s) failed to annotate, "
                              "mostly: no quota left on this API key"), message


def test_server_without_json_schema_falls_back_to_json_object(project: Project, site: FixtureSite,
                                                              llm: FakeOpenAI) -> None:
    llm.reject_json_schema = True
    project.config(site_and_llm_config(site, llm, extra="concurrency = 1"))
    project.build()
    assert len(conversations(project)) == 4
    assert [c["response_format"]["type"] for c in llm.calls] == ["json_schema"] + ["json_object"] * 4


def test_missing_api_key_is_a_clear_fatal_error(project: Project, site: FixtureSite, llm: FakeOpenAI,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    project.config(site_and_llm_config(site, llm))
    assert project.build() == 1
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    assert llm.calls == []


def test_the_api_key_never_reaches_artifacts_or_state(project: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    project.config(site_and_llm_config(site, llm))
    project.build()
    assert {k.lower(): v for k, v in llm.headers[0].items()}["authorization"] == "Bearer sk-test-secret-key-0123456789"
    for path in project.path.rglob("*"):
        if path.is_file():
            assert b"sk-test-secret" not in path.read_bytes(), path


@pytest.mark.parametrize("fault", ["html", "cut_off", "invalid_json", "wrong_roles"])
def test_a_junk_reply_once_is_asked_again_in_the_same_run(project: Project, site: FixtureSite, llm: FakeOpenAI,
                                                          fault: str) -> None:
    site.pages[1][1].missing = False
    llm.script[GBK_TITLE] = [fault]
    project.config(site_and_llm_config(site, llm))
    assert project.build() == 0
    assert "1455301" in conversations(project)
    assert sum(GBK_TITLE in call["messages"][-1]["content"] for call in llm.calls) == 2


@pytest.mark.parametrize(("fault", "message"), [
    ("html", "not a chat completion: '<html><body><h1>502 Bad Gateway"),
    ("cut_off", "reply was not complete JSON"),
    ("length", "cut off at max_tokens = 4096 (finish_reason: length)"),
])
def test_a_hostile_reply_fails_the_article_with_a_reason_a_person_can_act_on(
        project: Project, site: FixtureSite, llm: FakeOpenAI, capsys: pytest.CaptureFixture[str],
        fault: str, message: str) -> None:
    llm.script[GBK_TITLE] = [fault] * 10
    project.config(site_and_llm_config(site, llm))
    assert project.build() == 1
    err = capsys.readouterr().err
    assert message in err and "AttributeError" not in err and "Traceback" not in err, err
    assert "1455301" not in conversations(project)
    if fault == "length":  # asking again gives the same cut-off answer: one call, no retries
        assert sum(GBK_TITLE in call["messages"][-1]["content"] for call in llm.calls) == 1


def test_a_server_that_trickles_its_answer_is_cut_off_at_the_timeout(project: Project, site: FixtureSite,
                                                                     llm: FakeOpenAI,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    llm.script[GBK_TITLE] = ["trickle"] * 10  # a byte every 0.2 s: the whole answer would take minutes
    llm.trickle_delay = 0.2
    project.config(site_and_llm_config(site, llm, extra="timeout = 1.0"))
    assert project.build() == 1
    err = capsys.readouterr().err
    assert "no complete answer within timeout = 1.0 s" in err, err
    assert sorted(conversations(project)) == sorted(OTHER_IDS)


def test_a_question_asked_twice_goes_into_the_data_once(project: Project, site: FixtureSite, llm: FakeOpenAI,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    llm.script[GBK_TITLE] = ["repeats"]
    project.config(site_and_llm_config(site, llm))
    project.build()  # the fixture site's 404 article fails; the others go through
    lines = conversations(project)["1455301"].splitlines()
    questions = [line for line in lines if line.startswith("user,")]
    assert len(questions) == 2 and "同一个问题的另一个回答" not in "\n".join(lines)  # the first answer is kept
    records = json.loads((project.artifacts() / ".state" / "conversations.json").read_text(encoding="utf-8"))
    assert records["1455301"]["repeated_questions"] == 1 and "repeated_questions" not in records["1455093"]
    assert "1 repeated question(s) left out" in capsys.readouterr().err


def test_an_article_past_max_article_chars_is_sent_cut_and_the_cut_recorded(
        project: Project, site: FixtureSite, llm: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    project.config(site_and_llm_config(site, llm, extra="max_article_chars = 20"))  # the fixture's are ~25-40
    project.build()
    bodies = [call["messages"][-1]["content"].split("正文：\n", 1)[1] for call in llm.calls]
    note = "\n\n（正文过长，只给出前 20 字以内的部分。）"
    cut = [body for body in bodies if body.endswith(note)]
    assert cut and all(len(body) <= 20 + len(note) for body in cut)
    assert all(len(body) <= 20 for body in bodies if not body.endswith(note)), "a short article goes whole"
    records = json.loads((project.artifacts() / ".state" / "conversations.json").read_text(encoding="utf-8"))
    markdown = (project.artifacts() / "markdown" / "1455093.md").read_text(encoding="utf-8")
    assert records["1455093"]["cut_from_chars"] == len(markdown) > 20
    assert sum("cut_from_chars" in record for record in records.values()) == len(cut)
    assert f"{len(cut)} article(s) longer than the annotator's limit" in capsys.readouterr().err


def test_the_default_limit_leaves_earlier_conversations_valid() -> None:
    from pvbuild.builtins.openai_annotator import MAX_ARTICLE_CHARS, OpenAIAnnotator

    annotator = OpenAIAnnotator()
    assert "max_article_chars" not in annotator.identity(dict(annotator.options))
    assert annotator.identity({**annotator.options, "max_article_chars": MAX_ARTICLE_CHARS // 2})[
        "max_article_chars"] == MAX_ARTICLE_CHARS // 2
