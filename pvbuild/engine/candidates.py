"""Training candidates: several fine-tunes of one dataset (``training.candidates``), each its own job
with its own records, and the rule that picks the one deploy serves (``training.select``).

Without a list there is one candidate, unnamed, whose records keep the paths and keys pvbuild 0.1
gave them (``training.json``, ``model.json``; record keys ``train`` and ``package``), so existing
trees stay up to date. Named candidates live in ``candidates/<name>/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """One fine-tune: its name ("" for the single unnamed one), base model, hyperparameter overrides and
    instance type ("" for the base model's first)."""

    name: str
    base_model: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    instance_type: str = ""

    def key(self, stage: str) -> str:
        """The record key of this candidate's item in ``stage``: ``train``, or ``train:<name>``."""
        return f"{stage}:{self.name}" if self.name else stage

    def folder(self, artifacts: Path) -> Path:
        return artifacts / "candidates" / self.name if self.name else artifacts


def configured(training: Mapping[str, Any]) -> list[Candidate]:
    """The candidates of a validated ``training`` section, in the order configured."""
    tables: Sequence[Mapping[str, Any]] = training["candidates"]
    if not tables:
        return [Candidate("", training["base_model"], dict(training["hyperparameters"]), training["instance_type"])]
    return [Candidate(table["name"], table["base_model"],
                      {**training["hyperparameters"], **table["hyperparameters"]},
                      table["instance_type"] or training["instance_type"]) for table in tables]


def score(record: Mapping[str, Any] | None) -> float:
    """What ``select = "validation_loss"`` ranks by (lower is better): the final validation loss, else the
    final training loss; infinite for a job that has not completed."""
    if not record or record.get("status") != "Completed":
        return math.inf
    metrics = record.get("metrics") or {}
    value = metrics.get("validation_loss", metrics.get("train_loss"))
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.inf


def select(candidates: list[Candidate], records: Mapping[str, Mapping[str, Any] | None], rule: str) -> Candidate:
    """The candidate deploy serves: the one ``rule`` names, or the lowest score (ties: the first configured)."""
    named = [candidate for candidate in candidates if candidate.name == rule]
    if named:
        return named[0]
    return min(candidates, key=lambda candidate: score(records.get(candidate.name)))


@dataclass(frozen=True)
class Standing:
    """One candidate's line of the leaderboard (what its training record says)."""

    name: str
    base_model: str
    job_name: str
    status: str
    train_loss: float | None
    validation_loss: float | None
    perplexity: float | None  # exp of the mean validation token loss
    train_tokens: int | None
    training_seconds: int | None  # as the service counted them (SageMaker); None for the local trainer
    billable_seconds: int | None
    chrf: float | None  # mean chrF of its answers to the held-out questions (evaluation.questions)
    selected: bool


def standings(candidates: list[Candidate], records: Mapping[str, Mapping[str, Any] | None],
              selected: Candidate, chrf: Mapping[str, float | None] | None = None) -> list[Standing]:
    """Every candidate, best first (by ``score``; ties in configured order), the selected one marked."""
    found = []
    for candidate in sorted(candidates, key=lambda c: score(records.get(c.name))):
        record = records.get(candidate.name) or {}
        metrics: Mapping[str, Any] = record.get("metrics") or {}
        validation = metrics.get("validation_loss")
        found.append(Standing(
            name=candidate.name or "(single)", base_model=candidate.base_model,
            job_name=str(record.get("job_name") or ""), status=str(record.get("status") or "not trained"),
            train_loss=metrics.get("train_loss"), validation_loss=validation,
            perplexity=math.exp(validation) if isinstance(validation, int | float) and validation < 700 else None,
            train_tokens=metrics.get("train_tokens"), training_seconds=record.get("training_seconds"),
            billable_seconds=record.get("billable_seconds"),
            chrf=(chrf or {}).get(candidate.name), selected=candidate == selected))
    return found
