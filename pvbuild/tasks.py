"""The doit task graph, made from the stage catalog: one task per stage, each rebuilding only its stale items.

Plain doit with one task per article is quadratic in the dataset task's fan-in and slow to
load at 10,000 articles; here doit sees one task per stage, and each task's ``uptodate`` asks the
staleness engine (per-article exactness, stat-cached digests). The ``data`` gate fails the run
while any article failed, listing each with its reason, so the model half never spends time or
money on incomplete data.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvbuild.config import load_config
from pvbuild.engine import staleness
from pvbuild.engine.outcomes import save_failures
from pvbuild.engine.stage import Stage
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError, missing_extra
from pvbuild.progress import say
from pvbuild.reporter import AT_END, SELECTED, TimedReporter
from pvbuild.stages import prune
from pvbuild.stages.catalog import CATALOG, open_workspace
from pvbuild.stages.prune import empty_scratch

DOIT_CONFIG = {"default_tasks": [CATALOG[-1].name], "dep_file": ".pvbuild/doit.db", "backend": "json",
               "verbosity": 2, "reporter": TimedReporter}
INTERRUPTED = "interrupted (Ctrl-C): finished items are kept; run doit again to go on"

_workspaces: dict[tuple[str, str], Workspace] = {}
_MAIN_PID = os.getpid()


def _profile() -> str | None:
    try:
        from doit import get_var

        value = get_var("profile")
    except Exception:  # noqa: BLE001 - not running under doit
        value = None
    return value or os.environ.get("PVBUILD_PROFILE")


def workspace() -> Workspace:
    """One workspace per process and profile, shared by every task's check and action. It forgets
    what it read when a stage action wrote since (in this process or, with ``doit -n N``, another)."""
    key = (str(Path.cwd()), _profile() or "default")
    if key not in _workspaces:
        # The per-article folders' files are statted by workers meanwhile (engine.prehash.prestat).
        _workspaces[key] = open_workspace(load_config(Path.cwd(), _profile()))
    else:
        _workspaces[key].refresh()
    return _workspaces[key]


def settle_identities() -> None:
    """identities.json after a run that replayed a killed run's journal or pruned records
    (``Workspace.settle_identities``): nothing to do after any other run."""
    for current in _workspaces.values():
        current.settle_identities()


AT_END.append(settle_identities)


def save_caches() -> None:
    """The stat caches of this process's workspaces, once at the end of a run (an action saves its
    own when it finishes; writing 200,000 entries after every up-to-date check cost a tenth of a
    one-article rebuild at 100,000)."""
    for current in _workspaces.values():
        current.hasher.save()


AT_END.append(save_caches)


def refresh_history() -> None:
    """The report's History section (a machine-local script beside the project), after a run that wrote
    the report: ``pvbuild.history``."""
    from pvbuild.history import refresh_sidecar

    for current in _workspaces.values():
        refresh_sidecar(current.config.project_dir, current.report_dir, current.config.cache_dir)


AT_END.append(refresh_history)


def reset() -> None:
    """Forget loaded workspaces and plugins (a new build in the same process sees new files)."""
    from pvbuild.plugins import forget_plugins

    _workspaces.clear()
    forget_plugins()


def gate_runs(selected: list[str], catalog: tuple[Stage, ...] = CATALOG) -> bool:
    """Whether this doit run reaches the gate: if so, a stage's failed items are listed by the gate
    and the other articles go on; if not (``doit urls``, ``doit -a markdown``), the stage itself fails
    the run. ``selected``: the tasks doit was asked for (the reporter hears them)."""
    names = [stage.name for stage in catalog]
    gate = next((index for index, stage in enumerate(catalog) if stage.is_gate), len(catalog))
    return not selected or any(names.index(name) >= gate for name in selected if name in names)


def _uptodate(stage: Stage) -> Callable[[Any, Any], bool]:
    def check(task: Any, values: Any) -> bool:
        # The staleness pass makes tens of thousands of short-lived, acyclic objects per 10,000 articles:
        # the cycle collector finds nothing in them and cost a sixth of a no-op doit. Off while it runs.
        gc.disable()
        try:
            current = workspace()
            current.hasher.remember()  # until the next action writes: each file is looked at once
            return not staleness.stale(current, stage)
        except PvbuildError:
            return False  # the action runs and fails with the message (doit would print a traceback here)
        finally:
            gc.freeze()  # what the pass loaded (records, digests) lives until the run ends: never scan it
            gc.enable()
    return check


def _action(stage: Stage) -> Callable[[], Any]:
    def run() -> Any:
        from doit.exceptions import TaskFailed

        current: Workspace | None = None
        try:
            current = workspace()
            current.writing(stage.name, stage.writes)  # this stage writes files, and its records need their new digests
            empty_scratch(current.scratch_dir)
            current.forced = _always_execute()
            # The stat cache is saved when the run ends (AT_END), in the process that runs it; a child
            # of doit -n N saves its own as each stage finishes.
            current.save_cache_at_end = os.getpid() == _MAIN_PID
            # A stage that declares its writes leaves nothing over: prune's memo of a clean tree holds.
            clean = stage.writes is not None and prune.known_clean(current)
            result = stage.run(current)
            if clean:
                prune.still_clean(current)
        except PvbuildError as error:
            return TaskFailed(str(error))
        except ModuleNotFoundError as error:
            hint = missing_extra(error)
            if hint is None:
                raise
            return TaskFailed(str(hint))
        except KeyboardInterrupt:
            return TaskFailed(INTERRUPTED)
        finally:
            if current is not None:
                current.bump_generation(seen=stage.writes is not None)
        if stage.is_gate:
            return True
        save_failures(current.config.cache_dir, result)
        say(result.summary())
        for line in result.failure_lines():
            say(f"  {line}")
        if result.failures and not gate_runs(SELECTED):
            return TaskFailed(f"{stage.name}: {len(result.failures)} item(s) failed (listed above); the next run "
                              "retries them")
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
        say(INTERRUPTED)
    else:
        sys.__excepthook__(kind, value, trace)


def stage_tasks(catalog: tuple[Stage, ...] = CATALOG) -> dict[str, Callable[[], dict[str, Any]]]:
    """``task_*`` creators for dodo.py (and ``pvbuild build``), one per stage of ``catalog``, each
    depending on the one before."""
    Path(".pvbuild").mkdir(exist_ok=True)  # doit's dep_file lives there
    _usable_dep_file()
    sys.excepthook = _quiet_interrupt
    creators: dict[str, Callable[[], dict[str, Any]]] = {}
    for index, stage in enumerate(catalog):
        def creator(stage: Stage = stage, previous: str | None = catalog[index - 1].name if index else None
                    ) -> dict[str, Any]:
            _workspaces.clear()  # doit loads the tasks at the start of every run: each run sees the files afresh
            return {"actions": [_action(stage)], "uptodate": [_uptodate(stage)], "doc": stage.doc,
                    "task_dep": [previous] if previous else [], "verbosity": 2}
        creator.__doc__ = stage.doc
        creators[f"task_{stage.name}"] = creator
    return creators
