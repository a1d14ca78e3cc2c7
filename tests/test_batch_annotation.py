"""The openai annotator's batch mode through the real openai client against a local fake of the Files and
Batches endpoints: split input files, failed lines retried next run, expiry, and re-attaching after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Project, site_and_llm_config
from tests.fake_batches import FakeBatchOpenAI
from tests.standins import FixtureArticle, FixtureSite

BATCH_OPTIONS = 'mode = "batch"\nbatch_poll_seconds = 0.01\nbatch_max_requests = 64'


def many_pages(count: int, per_page: int = 20) -> list[list[FixtureArticle]]:
    articles = [FixtureArticle(str(1460000 + number), f"光伏政策第{number}号解读", "2025-08-01",
                               [f"第{number}号文件规定分布式光伏项目备案。", "余电上网电量按燃煤基准价结算。"])
                for number in range(count)]
    return [articles[start:start + per_page] for start in range(0, count, per_page)]


@pytest.fixture
def batch_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchOpenAI]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-key-0123456789")
    with FakeBatchOpenAI() as running:
        yield running


def config_for(site: FixtureSite, llm: FakeBatchOpenAI, pages: int) -> str:
    return site_and_llm_config(site, llm, BATCH_OPTIONS).replace("last_page = 2", f"last_page = {pages}")


def written(project: Project) -> set[str]:
    return {path.stem for path in (project.artifacts() / "conversations").glob("*.csv")}


def journal(project: Project) -> Path:
    return project.path / ".pvbuild" / "test" / "annotation-batches.json"


def test_200_articles_with_failed_lines_are_each_annotated_once(project: Project,
                                                                batch_llm: FakeBatchOpenAI) -> None:
    batch_llm.fail_every = 20  # 5 % of the lines fail the first time
    with FixtureSite(many_pages(200)) as site:
        project.config(config_for(site, batch_llm, 10))
        assert project.build() == 1  # ten articles failed, so the dataset waits
        assert len(batch_llm.batches) == 4  # 200 requests, at most 64 to an input file
        assert len(written(project)) == 190 and not journal(project).exists()
        records = json.loads((project.artifacts() / ".state" / "conversations.json").read_text(encoding="utf-8"))
        assert all(record["batch"] and record["usage"]["prompt_tokens"] > 0 for record in records.values())

        assert project.build() == 0
    assert len(written(project)) == 200 and len(batch_llm.batches) == 5  # only the ten failed lines again
    assert sorted(batch_llm.submitted.values()) == [1] * 190 + [2] * 10
    assert set(batch_llm.answered.values()) == {1} and len(batch_llm.answered) == 200  # each paid for once


def test_an_expired_batch_fails_what_it_did_not_run_and_the_rerun_sends_only_that(
        project: Project, batch_llm: FakeBatchOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    batch_llm.expire = True
    with FixtureSite(many_pages(40)) as site:
        project.config(config_for(site, batch_llm, 2))
        assert project.build() == 1
        assert len(written(project)) == 20
        assert "the batch expired (24 h) before this request ran" in capsys.readouterr().err
        batch_llm.expire = False
        assert project.build() == 0
    assert len(written(project)) == 40 and sorted(batch_llm.submitted.values()) == [1] * 20 + [2] * 20


def test_ctrl_c_after_submission_then_a_rerun_submits_nothing_new(project: Project, batch_llm: FakeBatchOpenAI) -> None:
    batch_llm.hold = True  # the batch stays in progress until released
    with FixtureSite(many_pages(30)) as site:
        project.config(config_for(site, batch_llm, 2))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "pvbuild", "--project", str(project.path), "build", "--profile", "test",
                   "data"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (journal(project).exists() and all("batch" in entry for entry in
                                                     json.loads(journal(project).read_text(encoding="utf-8")))):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr and process.stderr.read()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) != 0
        assert written(project) == set() and len(batch_llm.batches) == 1
        recorded = json.loads(journal(project).read_text(encoding="utf-8"))
        assert [entry["batch"] for entry in recorded] == ["batch_1"]

        batch_llm.hold = False
        assert project.build() == 0
    assert len(batch_llm.batches) == 1 and len(batch_llm.files) == 2  # the input file and the output file
    assert set(batch_llm.submitted.values()) == {1} and len(written(project)) == 30
    assert not journal(project).exists()


def test_a_batch_whose_articles_changed_is_cancelled_and_their_new_text_sent(
        project: Project, batch_llm: FakeBatchOpenAI) -> None:
    with FixtureSite(many_pages(5)) as site:
        project.config(config_for(site, batch_llm, 1))
        # A batch submitted by an earlier run for other text of these articles (its requests differ).
        stale = {"input_file": "file-0", "batch": "batch_0",
                 "requests": {str(1460000 + number): "0" * 64 for number in range(5)}}
        journal(project).parent.mkdir(parents=True)
        journal(project).write_text(json.dumps([stale]), encoding="utf-8")
        batch_llm.batches["batch_0"] = {"id": "batch_0", "object": "batch", "endpoint": "/v1/chat/completions",
                                        "input_file_id": "file-0", "completion_window": "24h",
                                        "status": "in_progress", "created_at": 0}
        assert project.build() == 0
    assert batch_llm.batches["batch_0"]["status"] == "cancelled" and len(written(project)) == 5


def test_a_refused_key_fails_every_article_once_and_writes_nothing(
        project: Project, batch_llm: FakeBatchOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    batch_llm.refuse_key = True
    with FixtureSite(many_pages(20)) as site:
        project.config(config_for(site, batch_llm, 1))
        assert project.build() == 1
    err = capsys.readouterr().err
    assert "authentication failed" in err and "(19 not attempted after it)" in err
    assert written(project) == set() and not journal(project).exists() and batch_llm.batches == {}
