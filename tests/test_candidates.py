"""Several training candidates in one build, offline: each its own job, a leaderboard, the winner
deployed by ``training.select``; adding a candidate trains one job, removing one or changing the rule
trains none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvbuild.cli import main
from pvbuild.errors import ConfigError
from tests.conftest import Project

BASE = """
[profile.test]
artifacts = "artifacts/test"
[profile.test.training]
base_model = "tiny"
select = "{select}"
[profile.test.training.hyperparameters]
epoch = 2
"""
CANDIDATE = """[[profile.test.training.candidates]]
name = "{name}"
hyperparameters = {{ learning_rate = {rate} }}
"""
RATES = {"careful": 0.00001, "bold": 0.003, "middle": 0.0005}


def configure(project: Project, names: list[str], select: str = "validation_loss") -> None:
    project.config(BASE.format(select=select) + "".join(CANDIDATE.format(name=n, rate=RATES[n]) for n in names))


def jobs(project: Project) -> list[str]:
    return sorted(path.stem for path in (project.path / ".pvbuild" / "test" / "jobs").glob("*.json"))


def leaderboard(project: Project, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["--project", str(project.path), "leaderboard", "--profile", "test", "--json"]) == 0
    found: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return found


def read(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def served_sha(project: Project) -> str:
    return str(read(project.artifacts() / "endpoint.json")["model_sha256"])


def candidate_sha(project: Project, name: str) -> str:
    return str(read(project.artifacts() / "candidates" / name / "model.json")["sha256"])


@pytest.fixture
def candidates(project: Project) -> Iterator[Project]:
    configure(project, ["careful", "bold"])
    try:
        yield project
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])


def test_two_candidates_train_rank_and_the_best_is_served(candidates: Project,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert candidates.build_all() == 0
    assert len(jobs(candidates)) == 2
    board = leaderboard(candidates, capsys)
    assert [row["name"] for row in board] and {row["name"] for row in board} == {"careful", "bold"}
    losses = [row["validation_loss"] for row in board]
    assert losses == sorted(losses) and all(row["status"] == "Completed" for row in board)
    assert [row["selected"] for row in board] == [True, False]  # the lowest validation loss is served
    assert served_sha(candidates) == candidate_sha(candidates, board[0]["name"])
    report = (candidates.artifacts() / "report" / "report.html").read_text(encoding="utf-8")
    assert "Leaderboard" in report and "careful" in report and "bold" in report and "★ served" in report
    metrics = read(candidates.artifacts() / "report" / "metrics.json")
    assert metrics[f"candidates.{board[0]['name']}.selected"] is True
    assert metrics["candidates.careful.validation_loss"] == next(r for r in board if r["name"] == "careful")[
        "validation_loss"]

    configure(candidates, ["careful", "bold", "middle"])  # a third: one more job, the first two kept
    assert candidates.build_all() == 0
    assert len(jobs(candidates)) == 3
    assert len(leaderboard(candidates, capsys)) == 3

    loser = next(row["name"] for row in leaderboard(candidates, capsys) if not row["selected"])
    configure(candidates, ["careful", "bold", "middle"], select=loser)  # the rule: redeploy, no training
    assert candidates.build_all() == 0
    assert len(jobs(candidates)) == 3
    assert served_sha(candidates) == candidate_sha(candidates, loser)

    configure(candidates, ["careful", "bold"], select=loser if loser != "middle" else "validation_loss")
    assert candidates.build_all() == 0  # one removed: nothing trains
    assert len(jobs(candidates)) == 3
    assert not (candidates.artifacts() / "candidates" / "middle").exists()  # pruned, as a clean build has none
    assert main(["--project", str(candidates.path), "check", "--profile", "test"]) == 0


def test_evaluation_asks_base_and_candidates_the_held_out_questions(candidates: Project,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    configure(candidates, ["careful", "bold"])
    text = (candidates.path / "pvbuild.toml").read_text(encoding="utf-8")
    candidates.config(text + "[profile.test.evaluation]\nquestions = 3\nmax_new_tokens = 12\n")
    assert candidates.build_all() == 0
    folder = candidates.artifacts() / "evaluation"
    assert sorted(path.name for path in folder.iterdir()) == ["base-tiny.json", "bold.json", "careful.json"]
    careful = read(folder / "careful.json")
    assert len(careful["answers"]) == 3 and careful["model"] == "careful"
    assert all(0 <= answer["chrf"] <= 100 and answer["reference"] and answer["question"]
               for answer in careful["answers"])
    assert careful["mean_chrf"] == round(sum(a["chrf"] for a in careful["answers"]) / 3, 2)
    base = read(folder / "base-tiny.json")
    assert [a["question"] for a in base["answers"]] == [a["question"] for a in careful["answers"]]
    board = leaderboard(candidates, capsys)
    assert {row["name"]: row["chrf"] for row in board} == {
        name: read(folder / f"{name}.json")["mean_chrf"] for name in ("careful", "bold")}
    report = (candidates.artifacts() / "report" / "report.html").read_text(encoding="utf-8")
    assert "Evaluation: 3 held-out questions" in report and "base model tiny" in report and "fine-tuned bold" in report
    metrics = read(candidates.artifacts() / "report" / "metrics.json")
    assert metrics["evaluation.base.tiny.chrf"] == base["mean_chrf"]

    before = (folder / "careful.json").read_bytes()
    (folder / "careful.json").unlink()  # greedy and seeded: the same model answers the same
    assert candidates.build_all() == 0
    assert (folder / "careful.json").read_bytes() == before
    assert len(jobs(candidates)) == 2
    assert main(["--project", str(candidates.path), "check", "--profile", "test"]) == 0


@pytest.mark.parametrize(("candidates_toml", "select", "message"), [
    ('[[profile.test.training.candidates]]\nname = "Big Model"\n', "validation_loss", "lowercase letters"),
    ('[[profile.test.training.candidates]]\nname = "a"\n[[profile.test.training.candidates]]\nname = "a"\n',
     "validation_loss", "named twice"),
    ('[[profile.test.training.candidates]]\nname = "a"\nlearning_rate = 0.1\n', "validation_loss",
     r"candidates\[0\]\.learning_rate: unknown option"),
    ('[[profile.test.training.candidates]]\nname = "a"\nbase_model = "tinny"\n', "validation_loss",
     "did you mean 'tiny'"),
    ('[[profile.test.training.candidates]]\nname = "alpha"\n', "validation_los", "did you mean 'validation_loss'"),
])
def test_candidate_mistakes_are_named_before_anything_runs(project: Project, candidates_toml: str, select: str,
                                                           message: str) -> None:
    from pvbuild.config import load_config

    project.config(BASE.format(select=select) + candidates_toml)
    with pytest.raises(ConfigError, match=message):
        load_config(project.path, "test")


def test_a_misspelled_hyperparameter_of_a_candidate_fails_with_did_you_mean(
        project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.config(BASE.format(select="validation_loss")
                   + '[[profile.test.training.candidates]]\nname = "a"\nhyperparameters = { epochs = 3 }\n')
    assert main(["--project", str(project.path), "check", "--profile", "test"]) == 2
    assert "(candidate 'a'): training.hyperparameters.epochs: unknown hyperparameter of tiny (did you mean 'epoch'?)" \
        in capsys.readouterr().err
