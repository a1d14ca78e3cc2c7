"""``pvbuild diff``: the build's numbers at a git revision against the working tree (or another revision)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pvbuild.cli import main
from pvbuild.stages.report import build_metrics, token_totals


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)


def write_metrics(project: Path, metrics: dict[str, object]) -> None:
    path = project / "artifacts" / "default" / "report" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def test_metrics_of_a_build_are_counts_tokens_and_losses() -> None:
    tokens = token_totals([{"usage": {"prompt_tokens": 10, "completion_tokens": 3}}, {"usage": {"prompt_tokens": 5}}])
    metrics = build_metrics({"articles": 12, "pairs": 70}, {"metrics": {"train_loss": 3.0669, "seconds": None}},
                            tokens)
    assert metrics == {"data.articles": 12, "data.pairs": 70, "annotation.completion_tokens": 3,
                       "annotation.prompt_tokens": 15, "training.train_loss": 3.0669}


def test_diff_against_head_and_between_revisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    git(tmp_path, "init", "-q")
    git(tmp_path, "-c", "user.email=a@b.c", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "empty")
    write_metrics(tmp_path, {"data.articles": 12, "training.validation_loss": 5.75})
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.email=a@b.c", "-c", "user.name=a", "commit", "-q", "-m", "first build")
    write_metrics(tmp_path, {"data.articles": 13, "training.validation_loss": 5.5, "data.pairs": 80})
    capsys.readouterr()
    assert main(["--project", str(tmp_path), "diff", "--json"]) == 0
    rows = {row["metric"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["data.articles"] == {"metric": "data.articles", "old": 12, "new": 13, "change": 1, "percent": 8.3}
    assert rows["data.pairs"] == {"metric": "data.pairs", "old": None, "new": 80}
    assert rows["training.validation_loss"]["change"] == pytest.approx(-0.25)
    assert main(["--project", str(tmp_path), "diff", "HEAD~1", "HEAD"]) == 0
    human = capsys.readouterr().out.splitlines()
    assert human[0].split() == ["metric", "HEAD~1", "HEAD", "change"]
    assert human[1].split() == ["data.articles", "-", "12"]  # no metrics before the first build
    assert main(["--project", str(tmp_path), "diff", "nosuchrev"]) == 2


def test_costs_at_list_prices_and_configured_prices() -> None:
    from pvbuild.prices import annotation_cost, instance_cost, token_price

    assert token_price("gpt-4o", []) == (2.50, 10.00) and token_price("gpt-4o", [1, 2]) == (1.0, 2.0)
    assert token_price("my-own-model", []) is None  # no price: no cost figure, rather than a wrong one
    assert annotation_cost({"prompt_tokens": 1_000_000, "completion_tokens": 200_000}, (2.50, 10.00)) == 4.5
    assert round(instance_cost("ml.g5.xlarge", 3600, instances=2) or 0, 3) == 2.816
    assert instance_cost("ml.unknown", 3600) is None and instance_cost("ml.g5.xlarge", None) is None
