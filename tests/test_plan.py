"""``pvbuild plan`` and ``annotator.budget_usd``: the next doit's steps and the annotation's cost, before any
call; a budget below the estimate stops the conversations step having sent nothing."""

from __future__ import annotations

import json

import pytest

from pvbuild.cli import main
from tests.conftest import Project, site_and_llm_config
from tests.standins import FakeOpenAI, FixtureSite


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
