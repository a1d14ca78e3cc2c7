"""The doit task graph: one task per stage, each rebuilding only its stale items.

Plain doit with one task per article is quadratic in the dataset task's fan-in and slow to
load at 10,000 articles; here doit sees one task per stage, and each task's ``uptodate`` asks
``Pipeline.stale`` (per-article exactness, stat-cached digests). The ``data`` gate fails the
run while any article failed, listing each with its reason, so the model half (upload, train,
package, deploy, report) never spends time or money on incomplete data.
"""

from __future__ import annotations

import os
import sys
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
    "urls": _runner("crawl", "run_urls_stage"), "prune": _runner("prune", "run_prune_stage"),
    "markdown": _runner("crawl", "run_markdown_stage"),
    "conversations": _runner("annotate", "run_conversations_stage"), "dataset": _runner("dataset", "run_dataset_stage"),
    "upload": _runner("upload", "run_upload_stage"),
    "train": _runner("training", "run_train_stage"), "package": _runner("package", "run_package_stage"),
    "deploy": _runner("endpoint", "run_deploy_stage"), "report": _runner("report", "run_report_stage")}
DOCS = {"urls": "crawl the list pages of every source into the URL table",
        "prune": "remove orphans (articles no longer in the URL table) and leftovers of interrupted builds",
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
ORDER = ("urls", "prune", *DATA_STAGES[1:], "data", "upload", "train", "package", "deploy", "report")

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
    """One pipeline per process and profile, shared by every task's check and action. It forgets
    what it read when a stage action wrote since (in this process or, with ``doit -n N``, another)."""
    key = (str(Path.cwd()), _profile() or "default")
    if key not in _pipelines:
        _pipelines[key] = Pipeline(load_config(Path.cwd(), _profile()))
    else:
        _pipelines[key].refresh()
    return _pipelines[key]


# Whether this doit run ends with the ``data`` gate (set by the reporter, which doit tells the
# selected tasks): if so, a stage's failed items are listed by the gate and the other articles go
# on; if not (``doit urls``, ``doit -a markdown``), the stage itself fails the run.
_gate_runs = True


def note_selection(selected: list[str]) -> None:
    global _gate_runs
    gate = ORDER.index("data")
    _gate_runs = any(ORDER.index(name) >= gate for name in selected if name in ORDER)


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
            return not (current_leftovers(current) if stage == "prune" else current.stale(stage))
        except PvbuildError:
            return False  # the action runs and fails with the message (doit would print a traceback here)
    return check


def current_leftovers(current: Pipeline) -> list[Any]:
    from pvbuild.prune import find_leftovers

    return find_leftovers(current)


def _action(stage: str) -> Callable[[], Any]:
    def run() -> Any:
        from doit.exceptions import TaskFailed

        current: Pipeline | None = None
        try:
            current = pipeline()
            current.invalidate()  # this stage writes files, and its records need their new digests
            _empty_scratch(current)
            current.forced = _always_execute()
            result = RUNNERS[stage](current)
        except PvbuildError as error:
            return TaskFailed(str(error))
        except KeyboardInterrupt:
            return TaskFailed("interrupted (Ctrl-C): finished items are kept; run doit again to go on")
        finally:
            if current is not None:
                current.bump_generation()
        save_failures(current.config.cache_dir, result)
        say(result.summary())
        for failure in result.failures:
            say(f"  failed, will retry next run: {failure}")
        if result.failures and not _gate_runs:
            return TaskFailed(f"{stage}: {len(result.failures)} item(s) failed (listed above); the next run retries "
                              "them")
        return True
    return run


def _always_execute() -> bool:
    """Whether doit runs this action because of ``-a``/``--always-execute`` (``doit -a urls`` must crawl
    the lists even when the table was edited by hand). doit tells only its runner, up the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        runner = frame.f_locals.get("self")
        if isinstance(getattr(runner, "always_execute", None), bool):
            return bool(runner.always_execute)  # type: ignore[union-attr]
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _empty_scratch(current: Pipeline) -> None:
    from pvbuild.prune import empty_scratch

    empty_scratch(current.scratch_dir)


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
    if not failures:  # run only because of doit -a
        return True
    lines = [f"{len(failures)} item(s) failed and will be retried on the next run:"]
    lines += [f"  {stage}: {text}" for stage, text in failures]
    return TaskFailed("\n".join(lines))


def _usable_dep_file() -> None:
    """doit's own database holds nothing pvbuild needs (staleness lives in the records): a truncated
    one (a kill while doit saved it) is removed instead of failing every run with a traceback."""
    import json

    path = Path(str(DOIT_CONFIG["dep_file"]))
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        say(f"pvbuild: {path} was unreadable (an interrupted run?); starting it afresh")
        path.unlink(missing_ok=True)


def _quiet_interrupt(kind: type[BaseException], value: BaseException, trace: Any) -> None:
    """Ctrl-C outside a stage action: one line, not a traceback."""
    if issubclass(kind, KeyboardInterrupt):
        say("interrupted (Ctrl-C): finished items are kept; run doit again to go on")
    else:
        sys.__excepthook__(kind, value, trace)


def stage_tasks() -> dict[str, Callable[[], dict[str, Any]]]:
    """``task_*`` creators for dodo.py (and ``pvbuild build``)."""
    Path(".pvbuild").mkdir(exist_ok=True)  # doit's dep_file lives there
    _usable_dep_file()
    sys.excepthook = _quiet_interrupt
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
