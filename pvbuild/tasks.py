"""The doit task graph: one task per stage, each rebuilding only its stale items.

Plain doit with one task per article is quadratic in the dataset task's fan-in and slow to
load at 10,000 articles; here doit sees five tasks, and each task's ``uptodate`` asks
``Pipeline.stale`` (per-article exactness, stat-cached digests). ``report`` runs last and
fails the run while any failed item is still stale, listing each with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvbuild.annotate import run_conversations_stage
from pvbuild.config import load_config
from pvbuild.crawl import run_markdown_stage, run_urls_stage
from pvbuild.dataset import run_dataset_stage
from pvbuild.errors import PvbuildError
from pvbuild.outcomes import StageResult, load_failures, save_failures
from pvbuild.pipeline import STAGES, Pipeline
from pvbuild.progress import say

StageRunner = Callable[[Pipeline], StageResult]
RUNNERS: dict[str, StageRunner] = {"urls": run_urls_stage, "markdown": run_markdown_stage,
                                   "conversations": run_conversations_stage, "dataset": run_dataset_stage}
DOCS = {"urls": "crawl the list pages of every source into the URL table",
        "markdown": "crawl each new or changed article into markdown",
        "conversations": "annotate each new or changed article into a conversation CSV",
        "dataset": "build train.jsonl, template.json, chat.jsonl and the Arrow dataset",
        "report": "fail the run while any article failed, listing each failure and its reason"}

DOIT_CONFIG = {"default_tasks": ["report"], "dep_file": ".pvbuild/doit.db", "backend": "json", "verbosity": 2}

_pipelines: dict[tuple[str, str], Pipeline] = {}


def _profile() -> str | None:
    try:
        from doit import get_var

        value = get_var("profile")
    except Exception:  # noqa: BLE001 - not running under doit
        value = None
    return value or os.environ.get("PVBUILD_PROFILE")


def pipeline() -> Pipeline:
    """One pipeline per process and profile, shared by every task's check and action."""
    key = (str(Path.cwd()), _profile() or "default")
    if key not in _pipelines:
        _pipelines[key] = Pipeline(load_config(Path.cwd(), _profile()))
    return _pipelines[key]


def reset() -> None:
    """Forget loaded pipelines and plugins (a new build in the same process sees new files)."""
    from pvbuild.plugins import forget_plugins

    _pipelines.clear()
    forget_plugins()


def _uptodate(stage: str) -> Callable[[Any, Any], bool]:
    def check(task: Any, values: Any) -> bool:
        return not pipeline().stale(stage)
    return check


def _action(stage: str) -> Callable[[], Any]:
    def run() -> Any:
        from doit.exceptions import TaskFailed

        current = pipeline()
        try:
            result = RUNNERS[stage](current)
        except PvbuildError as error:
            return TaskFailed(str(error))
        save_failures(current.config.cache_dir, result)
        say(result.summary())
        for failure in result.failures:
            say(f"  failed, will retry next run: {failure}")
        return True
    return run


def outstanding_failures(current: Pipeline) -> list[tuple[str, str]]:
    """Failures of earlier runs whose items are still stale (fixed ones drop out)."""
    found = []
    for stage in STAGES:
        failures = load_failures(current.config.cache_dir, stage)
        if not failures:
            continue
        stale = {entry.item.key for entry in current.stale(stage)}
        found += [(stage, str(f)) for f in failures if f.key in stale or stage == "urls" and stale]
    return found


def _report() -> Any:
    from doit.exceptions import TaskFailed

    failures = outstanding_failures(pipeline())
    lines = [f"{len(failures)} item(s) failed and will be retried on the next run:"]
    lines += [f"  {stage}: {text}" for stage, text in failures]
    return TaskFailed("\n".join(lines))


def stage_tasks() -> dict[str, Callable[[], dict[str, Any]]]:
    """``task_*`` creators for dodo.py (and ``pvbuild build``)."""
    Path(".pvbuild").mkdir(exist_ok=True)  # doit's dep_file lives there
    creators: dict[str, Callable[[], dict[str, Any]]] = {}
    previous: str | None = None
    for stage in STAGES:
        def creator(stage: str = stage, previous: str | None = previous) -> dict[str, Any]:
            return {"actions": [_action(stage)], "uptodate": [_uptodate(stage)], "doc": DOCS[stage],
                    "task_dep": [previous] if previous else [], "verbosity": 2}
        creator.__doc__ = DOCS[stage]
        creators[f"task_{stage}"] = creator
        previous = stage

    def task_report() -> dict[str, Any]:
        return {"actions": [_report], "task_dep": ["dataset"], "doc": DOCS["report"], "verbosity": 2,
                "uptodate": [lambda task, values: not outstanding_failures(pipeline())]}
    task_report.__doc__ = DOCS["report"]
    creators["task_report"] = task_report
    return creators
