"""The ``data`` gate between the two halves: the model half (upload, train, package, deploy,
report) never spends time or money on incomplete data. While an article failed (and is still
stale), the gate fails the run, listing each failure and its reason; the next run retries them.
``dataset.max_failed`` lets the model half go on without that many failed articles (a dead link):
the gate then lists them, ``check`` names them apart from the stale artifacts, and the report too."""

from __future__ import annotations

from pvbuild.engine import staleness
from pvbuild.engine.outcomes import StageResult, load_failures
from pvbuild.engine.records import Item
from pvbuild.engine.stage import Stage, StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.progress import say
from pvbuild.stages import conversations, dataset, markdown, urls

GUARDED: tuple[Stage, ...] = (urls.STAGE, markdown.STAGE, conversations.STAGE, dataset.STAGE)
GONE_PAGES = " (a page that is gone, HTTP 404 or 410, once its URL row or crawler changes, or with --retry-failed)"


def outstanding_failures(workspace: Workspace) -> list[StaleItem]:
    """Failures of earlier runs whose items are still stale (fixed ones drop out)."""
    found = []
    for stage in GUARDED:
        failures = load_failures(workspace.config.cache_dir, stage.name)
        if not failures:
            continue
        stale = {entry.item.key for entry in staleness.stale(workspace, stage)}
        found += [StaleItem(Item(f"{stage.name}:{failure.key}", {}, failure.where), f"{stage.name}: {failure}")
                  for failure in failures if failure.key in stale or stage is urls.STAGE and stale]
    return found


def allowance(workspace: Workspace) -> int:
    """How many failed articles ``dataset.max_failed`` lets the model half go on without."""
    limit = workspace.config.dataset["max_failed"]
    return int(limit) if isinstance(limit, int) else int(limit * len(workspace.rows()))


def allowed_failures(workspace: Workspace) -> list[StaleItem]:
    """The outstanding failures, when they are within ``dataset.max_failed`` (else none is allowed)."""
    failures = outstanding_failures(workspace)
    return failures if failures and len(failures) <= allowance(workspace) else []


class DataGate(StageBase):
    name = "data"
    doc = "fail the run while more articles failed than dataset.max_failed allows, listing each and why"
    is_gate = True

    def items(self, workspace: Workspace) -> list[Item]:
        return []

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        failures = outstanding_failures(workspace)
        return failures if len(failures) > allowance(workspace) else []

    def run(self, workspace: Workspace) -> StageResult:
        failures, allowed = outstanding_failures(workspace), allowance(workspace)
        result = StageResult(self.name)
        if len(failures) > allowed:  # (none: doit -a ran the gate although it was open)
            lines = [f"{len(failures)} item(s) failed and will be retried on the next run{GONE_PAGES}"
                     + (f" (dataset.max_failed allows {allowed})" if allowed else "") + ":"]
            raise PvbuildError("\n".join([*lines, *(f"  {entry.reason}" for entry in failures)]))
        if failures:
            say(f"data: the model half goes on without {len(failures)} failed item(s) "
                f"(dataset.max_failed = {workspace.config.dataset['max_failed']}); they are retried next run"
                f"{GONE_PAGES}:")
            for entry in failures:
                say(f"  {entry.reason}")
        return result


STAGE = DataGate()
