"""``pvbuild plan`` and ``annotator.budget_usd``: the next doit's steps and the annotation's cost, before any
call; a budget below the estimate stops the conversations step having sent nothing."""

from __future__ import annotations

import json
from random import Random

import pytest

from pvbuild.cli import main
from tests.conftest import Project, site_and_llm_config
from tests.standins import FakeOpenAI, FixtureArticle, FixtureSite


def plan(project: Project, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main(["--project", str(project.path), "plan", "--profile", "test", "--json"]) == 0
    found: dict[str, object] = json.loads(capsys.readouterr().out)
    return found


def test_plan_prices_the_annotation_and_a_budget_below_it_sends_nothing(
        project: Project, site: FixtureSite, llm: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    allow_dead_link = "[profile.test.dataset]\nmax_failed = 1\n"  # the fixture site has one
    project.config(site_and_llm_config(site, llm, "budget_usd = 0.0001\n" + allow_dead_link))
    project.build("markdown")
    found = plan(project, capsys)
    annotation = found["annotation"]
    assert isinstance(annotation, dict) and annotation["articles"] == 4 and annotation["model"] == "gpt-4o"
    assert annotation["prompt_tokens"] > 4 * 400 and annotation["completion_tokens"] == 4 * 500  # no records yet
    assert annotation["usd"] > 0.0001  # 4 articles at gpt-4o list prices
    assert main(["--project", str(project.path), "plan", "--profile", "test"]) == 0
    assert "annotation: 4 article(s) with gpt-4o" in capsys.readouterr().out

    assert project.build() != 0  # over budget: stopped before any call
    captured = capsys.readouterr()  # doit prints a failed task's error on stdout
    assert "above annotator.budget_usd = 0.0001: nothing was sent" in captured.out + captured.err
    assert llm.calls == [] and not list((project.artifacts() / "conversations").glob("*.csv"))

    project.config(site_and_llm_config(site, llm, "budget_usd = 5.0\n" + allow_dead_link))  # no output option
    assert project.build() == 0 and len(llm.calls) == 4
    assert plan(project, capsys)["annotation"] is None  # nothing left to annotate


def test_the_estimate_learns_from_recorded_usage(project: Project, site: FixtureSite, llm: FakeOpenAI,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    project.config(site_and_llm_config(site, llm, "[profile.test.dataset]\nmax_failed = 1\n"))
    assert project.build() == 0  # the fake server records 100 prompt and 50 completion tokens an article
    for path in (project.artifacts() / "conversations").glob("*.csv"):
        path.unlink()  # the same articles again: the estimate is what they took
    annotation = plan(project, capsys)["annotation"]
    assert isinstance(annotation, dict)
    assert (annotation["prompt_tokens"], annotation["completion_tokens"]) == (400, 200)


def test_the_estimate_for_a_new_site_of_1000_articles_is_within_10_percent_of_what_the_server_counts(
        project: Project, site: FixtureSite, llm: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    llm.count = True  # the server counts the tokens of what it is sent and answers
    reference = site_and_llm_config(site, llm, "[profile.test.dataset]\nmax_failed = 1\n")
    project.config(reference)
    assert project.build() == 0  # the reference site, annotated: its records hold the counted usage
    random = Random(7)
    articles = [FixtureArticle(str(1470000 + number), f"新站第{number}篇：分布式光伏政策解读", "2025-09-01",
                               [f"第{paragraph}段：自然人户用光伏项目由电网企业代为备案，余电上网电量按当地燃煤基准价结算。"
                                for paragraph in range(random.randint(3, 60))], day="20250901")
                for number in range(1000)]
    with FixtureSite([articles[start:start + 50] for start in range(0, 1000, 50)]) as new_site:
        new_source = (f'[profile.test.sources.newsite]\nplugin = "bjx"\nlist_url = "{new_site.url}/zc/{{page}}"\n'
                      "first_page = 1\nlast_page = 20\nretries = 0\n")
        project.config(reference + new_source)
        project.build("markdown")  # crawling is free (the reference site's dead link fails again)
        assert len(list((project.artifacts() / "markdown").glob("*.md"))) == 1004
        annotation = plan(project, capsys)["annotation"]
        assert isinstance(annotation, dict) and annotation["articles"] == 1000
        estimated = {name: int(annotation[name]) for name in ("prompt_tokens", "completion_tokens")}

        below = f"[profile.test.annotator]\nbudget_usd = {float(annotation['usd']) * 0.9:.4f}\n"
        project.config(reference.replace("[profile.test.annotator]\n", below) + new_source)
        calls = len(llm.calls)
        assert project.build() != 0 and len(llm.calls) == calls  # stopped before any call

        project.config(reference + new_source)
        llm.tokens.clear()
        assert project.build() == 0
    assert len(llm.calls) == calls + 1000
    counted = llm.tokens
    total = sum(estimated.values()) / sum(counted.values())
    prompt = estimated["prompt_tokens"] / counted["prompt_tokens"]
    print(f"estimated {estimated}, counted {dict(counted)}: total {total:.3f}, prompt {prompt:.3f}")
    assert 0.9 <= total <= 1.1 and 0.9 <= prompt <= 1.1
