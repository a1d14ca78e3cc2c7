"""The ``evaluate`` stage: held-out lines asked of each candidate and of its base model, scored.

With ``evaluation.questions = N`` (0, the default, turns it off) the first N held-out lines of the
uploaded dataset (its validation channel, else the lines the trainer holds out with
``validation_split_ratio`` and ``seed``) are asked of every fine-tuned candidate and of every base
model they start from, greedily, and each answer is scored against the line's reference answer
with chrF (``services.evaluation``). One JSON file per model in ``evaluation/``; the leaderboard and
the report read them. The models run on this machine, so this needs the local backend.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pvbuild.engine import staleness
from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item, digest
from pvbuild.engine.stage import StageBase
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.files import write_artifact
from pvbuild.progress import say
from pvbuild.services.stores import download_prefix
from pvbuild.stages.train import resolved_hyperparameters

BASE = "base:"  # the key of a base model's evaluation: evaluate:base:<name>


def evaluation_file(workspace: Workspace, name: str) -> Path:
    """``evaluation/<candidate>.json`` (``model.json`` for the single unnamed one), ``base-<model>.json``."""
    stem = f"base-{name.removeprefix(BASE)}" if name.startswith(BASE) else name or "model"
    return workspace.config.artifacts / "evaluation" / f"{stem}.json"


def _split(workspace: Workspace) -> tuple[float, int, bool]:
    """How the trainer holds lines out (the first candidate's ratio and seed) and whether lines are dialogs."""
    hyperparameters = resolved_hyperparameters(workspace, workspace.candidates()[0])
    return (float(hyperparameters.get("validation_split_ratio", 0.0)), int(hyperparameters.get("seed", 42)),
            hyperparameters.get("chat_dataset") == "True")


class EvaluateStage(StageBase):
    name = "evaluate"
    doc = "ask held-out questions of each candidate and its base model; score the answers (chrF)"
    derived_inputs = frozenset({"model", "questions"})

    def items(self, workspace: Workspace) -> list[Item]:
        count = int(workspace.config.evaluation["questions"])
        if not count:
            return []
        marker = workspace.read_upload()
        questions = digest([marker.dataset if marker else None, *_split(workspace), count])
        options = workspace.options_identity(workspace.config.evaluation)
        found = []
        for candidate in workspace.candidates():
            model = workspace.read_model(candidate)
            found.append(Item(candidate.key("evaluate"), {"model": model.sha256 if model else None,
                                                          "questions": questions, "evaluation": options},
                              str(evaluation_file(workspace, candidate.name))))
        for base in sorted({candidate.base_model for candidate in workspace.candidates()}):
            identity = workspace.identity(workspace.plugin_identity("base_models", base))
            found.append(Item(f"evaluate:{BASE}{base}", {
                "base_model": identity, "model_path": str(workspace.config.training["model_path"]),
                "questions": questions, "evaluation": options}, str(evaluation_file(workspace, BASE + base))))
        return found

    def run(self, workspace: Workspace) -> StageResult:
        stale = staleness.to_build(workspace, self)
        if not stale:
            return StageResult(self.name, skipped=len(self.items(workspace)))
        marker = workspace.read_upload()
        if marker is None:
            raise PvbuildError(f"{workspace.upload_marker}: no uploaded dataset to take questions from")
        workspace.scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pvbuild-evaluate-", dir=workspace.scratch_dir) as scratch, \
                workspace.finishing(self.name):
            work = Path(scratch)
            asked = self._questions(workspace, marker.channels, work)
            for entry in stale:
                model_dir = self._model_dir(workspace, entry.item.key, work)
                self._evaluate(workspace, entry.item, model_dir, asked)
                workspace.record(self.name, entry.item)
        return StageResult(self.name, built=len(stale))

    def _questions(self, workspace: Workspace, channels: Mapping[str, str], work: Path) -> dict[str, Any]:
        """The held-out lines as questions, and the channel they came from (a base model may be built from it)."""
        from pvbuild.services.evaluation import questions_of
        from pvbuild.services.sft_data import channel_lines, split_validation

        store = workspace.store()
        train_dir = work / "training"
        download_prefix(store, store.key(channels["training"]), train_dir)
        ratio, seed, chat = _split(workspace)
        lines, template = channel_lines(train_dir)
        if "validation" in channels:
            download_prefix(store, store.key(channels["validation"]), work / "validation")
            held = channel_lines(work / "validation")[0]
        else:
            held = split_validation(lines, ratio, seed)[1]
        if not held:
            raise PvbuildError(f"{workspace.config.config_file}: evaluation.questions: the dataset holds no lines "
                               "out; set dataset.validation_ratio or the validation_split_ratio hyperparameter")
        questions = questions_of(held, template, chat, int(workspace.config.evaluation["questions"]))
        dialogs = None
        if chat:
            by_where = {line.where: list(line.values.get("dialog") or []) for line in held}
            dialogs = [_before_last_answer(by_where[q.where]) for q in questions]
        return {"questions": questions, "dialogs": dialogs, "train_dir": train_dir}

    def _model_dir(self, workspace: Workspace, key: str, work: Path) -> Path | str:
        """A candidate's packed model, unpacked (where ``ask`` and the server unpack it), or its base model."""
        from pvbuild.services.local_training import base_model_source
        from pvbuild.services.serve import unpack

        by_key = {candidate.key(self.name): candidate for candidate in workspace.candidates()}
        if key in by_key:
            model = workspace.read_model(by_key[key])
            if model is None:
                raise PvbuildError(f"{workspace.model_record_of(by_key[key])}: no packed model to evaluate")
            archive = work / f"{model.sha256[:16]}.tar.gz"
            workspace.store().get(workspace.store().key(model.uri), archive)
            return unpack(archive, workspace.config.cache_dir / "serve", model.sha256)
        base_name = key.removeprefix(f"{self.name}:{BASE}")
        candidate = next(c for c in workspace.candidates() if c.base_model == base_name)
        return base_model_source(workspace.base_model(candidate), workspace.config.training,
                                 resolved_hyperparameters(workspace, candidate),
                                 workspace.config.cache_dir / "models", work / "training", work / f"base-{base_name}")

    def _evaluate(self, workspace: Workspace, item: Item, model_dir: Path | str, asked: dict[str, Any]) -> None:
        from pvbuild.services.evaluation import answer, chrf

        questions = asked["questions"]
        answers = answer(model_dir, questions, asked["dialogs"], int(workspace.config.evaluation["max_new_tokens"]))
        scores = chrf(answers, [question.reference for question in questions])
        name = item.key.split(":", 1)[1] if ":" in item.key else ""
        write_artifact(Path(item.file), {
            "model": name or "(single)", "mean_chrf": round(sum(scores) / len(scores), 2) if scores else None,
            "answers": [{"where": q.where, "question": q.question, "reference": q.reference, "answer": a, "chrf": s}
                        for q, a, s in zip(questions, answers, scores, strict=True)]})
        say(f"evaluate: {name or 'model'}: {len(questions)} questions, mean chrF "
            f"{sum(scores) / max(1, len(scores)):.1f}")


def _before_last_answer(dialog: list[dict[str, str]]) -> list[dict[str, str]]:
    last = max((i for i, message in enumerate(dialog) if message.get("role") == "assistant"), default=len(dialog))
    return dialog[:last]


def evaluated_names(workspace: Workspace) -> list[str]:
    """What is evaluated: every candidate (by name), then every base model they start from (``base:<model>``)."""
    found = workspace.candidates()
    return [candidate.name for candidate in found] + sorted({BASE + candidate.base_model for candidate in found})


def scores(workspace: Workspace) -> dict[str, dict[str, Any]]:
    """Every evaluation there is, by key (a candidate's name, ``base:<model>``), for the leaderboard and report."""
    found: dict[str, dict[str, Any]] = {}
    if not workspace.config.evaluation["questions"]:
        return found
    for name in evaluated_names(workspace):
        value = workspace.read_artifact(evaluation_file(workspace, name))
        if value is not None:
            found[name] = value
    return found


STAGE = EvaluateStage()


def mean_scores(workspace: Workspace) -> dict[str, float | None]:
    """Each evaluated model's mean chrF, by key (as ``scores``)."""
    return {name: value.get("mean_chrf") for name, value in scores(workspace).items()}
