"""The doit task graph: one task per stage, each rebuilding only its stale items.

Plain doit with one task per article is quadratic in the dataset task's fan-in and slow to
load at 10,000 articles; here doit sees one task per stage, and each task's ``uptodate`` asks
``Pipeline.stale`` (per-article exactness, stat-cached digests). The ``data`` gate fails the
run while any article failed, listing each with its reason, so the model half (upload, train,
package, deploy, report) never spends time or money on incomplete data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvbuild.config import load_config
from pvbuild.errors import PvbuildError
from pvbuild.outcomes import StageResult, load_failures, save_failures
from pvbuild.pipeline import DATA_STAGES, Pipeline
from pvbuild.progress import say
from pvbuild.reporter import TimedReporter


def _runner(module: str, function: str) -> Callable[[Pipeline], StageResult]:
    """Import a stage's module only when its step runs: a no-op run imports none of them (the model
    half's bring torch, boto3 and matplotlib; the data half's asyncio and crawl4ai)."""
    def run(current: Pipeline) -> StageResult:
        import importlib

        result: StageResult = getattr(importlib.import_module(f"pvbuild.{module}"), function)(current)
        return result
    return run


StageRunner = Callable[[Pipeline], StageResult]
RUNNERS: dict[str, StageRunner] = {
    "urls": _runner("crawl", "run_urls_stage"), "markdown": _runner("crawl", "run_markdown_stage"),
    "conversations": _runner("annotate", "run_conversations_stage"), "dataset": _runner("dataset", "run_dataset_stage"),
    "upload": _runner("upload", "run_upload_stage"),
    "train": _runner("training", "run_train_stage"), "package": _runner("package", "run_package_stage"),
    "deploy": _runner("endpoint", "run_deploy_stage"), "report": _runner("report", "run_report_stage")}
DOCS = {"urls": "crawl the list pages of every source into the URL table",
        "markdown": "crawl each new or changed article into markdown",
        "conversations": "annotate each new or changed article into a conversation CSV",
        "dataset": "build train.jsonl, template.json, chat.jsonl and the Arrow dataset",
        "data": "fail the run while any article failed, listing each failure and its reason",
        "upload": "upload the dataset files to the object store and write the verified upload marker",
        "train": "fine-tune the base model (one job per distinct data, model and hyperparameters)",
        "package": "pack the job's model artifacts into model.tar.gz beside the job output",
        "deploy": "serve model.tar.gz from an endpoint (unchanged model: no redeploy)",
        "report": "write the loss curve and the HTML report with the endpoint's sample answers"}
# The order doit runs them in; "data" is the gate between the two halves.
ORDER = (*DATA_STAGES, "data", "upload", "train", "package", "deploy", "report")

DOIT_CONFIG = {"default_tasks": ["report"], "dep_file": ".pvbuild/doit.db", "backend": "json", "verbosity": 2,
               "reporter": TimedReporter}

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
        try:
            current = pipeline()
            current.hasher.remember()  # until the next action writes: each file is looked at once
            return not current.stale(stage)
        except PvbuildError:
            return False  # the action runs and fails with the message (doit would print a traceback here)
    return check


def _action(stage: str) -> Callable[[], Any]:
    def run() -> Any:
        from doit.exceptions import TaskFailed

        try:
            current = pipeline()
            current.hasher.forget()  # this stage writes files, and its records need their new digests
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
    for stage in DATA_STAGES:
        failures = load_failures(current.config.cache_dir, stage)
        if not failures:
            continue
        stale = {entry.item.key for entry in current.stale(stage)}
        found += [(stage, str(f)) for f in failures if f.key in stale or stage == "urls" and stale]
    return found


def _gate_open(task: Any, values: Any) -> bool:
    current = pipeline()
    current.hasher.remember()
    return not outstanding_failures(current)


def _data_gate() -> Any:
    from doit.exceptions import TaskFailed

    failures = outstanding_failures(pipeline())
    lines = [f"{len(failures)} item(s) failed and will be retried on the next run:"]
    lines += [f"  {stage}: {text}" for stage, text in failures]
    return TaskFailed("\n".join(lines))


def stage_tasks() -> dict[str, Callable[[], dict[str, Any]]]:
    """``task_*`` creators for dodo.py (and ``pvbuild build``)."""
    Path(".pvbuild").mkdir(exist_ok=True)  # doit's dep_file lives there
    creators: dict[str, Callable[[], dict[str, Any]]] = {}
    for index, stage in enumerate(ORDER):
        def creator(stage: str = stage, previous: str | None = ORDER[index - 1] if index else None) -> dict[str, Any]:
            _pipelines.clear()  # doit loads the tasks at the start of every run: each run sees the files afresh
            gate = stage == "data"
            return {"actions": [_data_gate if gate else _action(stage)],
                    "uptodate": [_gate_open if gate else _uptodate(stage)], "doc": DOCS[stage],
                    "task_dep": [previous] if previous else [], "verbosity": 2}
        creator.__doc__ = DOCS[stage]
        creators[f"task_{stage}"] = creator
    return creators
