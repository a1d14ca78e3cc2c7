"""The ``data`` gate between the two halves: the model half (upload, train, package, deploy,
report) never spends time or money on incomplete data. While an article failed (and is still
stale), the gate fails the run, listing each failure and its reason; the next run retries them."""

from __future__ import annotations

from pvbuild.engine import staleness
from pvbuild.engine.outcomes import StageResult, load_failures
from pvbuild.engine.records import Item
from pvbuild.engine.stage import Stage, StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.stages import conversations, dataset, markdown, urls

GUARDED: tuple[Stage, ...] = (urls.STAGE, markdown.STAGE, conversations.STAGE, dataset.STAGE)


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


class DataGate(StageBase):
    name = "data"
    doc = "fail the run while any article failed, listing each failure and its reason"
    is_gate = True

    def items(self, workspace: Workspace) -> list[Item]:
        return []

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        return outstanding_failures(workspace)

    def run(self, workspace: Workspace) -> StageResult:
        failures = outstanding_failures(workspace)
        if failures:  # (none: doit -a ran the gate although it was open)
            lines = [f"{len(failures)} item(s) failed and will be retried on the next run:"]
            raise PvbuildError("\n".join([*lines, *(f"  {entry.reason}" for entry in failures)]))
        return StageResult(self.name)


STAGE = DataGate()
