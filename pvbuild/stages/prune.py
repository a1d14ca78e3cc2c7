"""What a build left that a clean build would not have, and how ``doit`` removes it.

- orphans: markdown and conversation files (and their records) whose URL row is gone, or whose
  source is no longer configured; the folders and records of training candidates no longer configured;
- temporary files and folders of a build that was killed mid-write (their names end with
  ``records.TEMP_SUFFIX``; older versions' ``.NAME.XXXX.tmp`` and ``.dataset-XXXX`` too);
- a stage's journal that was never folded into its records file;
- the machine-local scratch folder of a killed stage (a training checkpoint can be large);
- records laid out for another shard size (``dataset.articles_per_shard`` changed): laid out again.

The ``prune`` stage runs right after the URL table, so ``doit`` removes all of it, ``pvbuild check``
reports it (exit 1) and ``pvbuild prune [--dry-run]`` does it on demand.
"""

from __future__ import annotations

import contextlib
import operator
import os
import re
import shutil
from dataclasses import dataclass
from enum import StrEnum
from itertools import repeat
from pathlib import Path
from typing import Any

from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item, digest
from pvbuild.engine.shards import shard_count
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.files import TEMP_SUFFIX, atomic_write_text
from pvbuild.progress import say

PER_ARTICLE = (("markdown", ".md"), ("conversations", ".csv"))
# What earlier versions left: ``.urls.csv.XXXX.tmp``, ``.dataset-XXXX/``, ``dataset.old/``.
_OLD_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$|^\.(dataset|report)-[A-Za-z0-9_]{6,}$"
                            r"|^(dataset|report)\.old$")


class Kind(StrEnum):
    ORPHAN = "orphan"
    TEMPORARY = "temporary"
    JOURNAL = "journal"
    RECORD = "record"
    SCRATCH = "scratch"
    LAYOUT = "layout"


@dataclass(frozen=True)
class Leftover:
    """One thing to remove: what it is, where, and why it is there."""

    kind: Kind
    stage: str
    key: str
    path: Path
    reason: str


def _is_temporary(name: str) -> bool:
    return name.endswith(TEMP_SUFFIX) or bool(_OLD_TEMPORARY.match(name))


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _article_leftovers(workspace: Workspace, ids: set[str], gone_sources: dict[str, str]) -> list[Leftover]:
    """Set differences, not a loop per name: a no-op doit looks at 20,000 names at 10,000 articles."""
    found = []
    for stage, suffix in PER_ARTICLE:
        directory = workspace.config.artifacts / stage
        # Set operations in C: only the names that are not an article's own are looked at one by one.
        unexpected = set(_names(directory)).difference(map(operator.add, ids, repeat(suffix)))
        temporary = sorted(name for name in unexpected if name.startswith(".") and _is_temporary(name))
        orphans = {name for name in unexpected if name.endswith(suffix)}
        for name in temporary:
            found.append(Leftover(Kind.TEMPORARY, stage, name, directory / name,
                                  "temporary file of an interrupted build"))
        for name in sorted(orphans - set(temporary)):
            key = name.removesuffix(suffix)
            found.append(Leftover(Kind.ORPHAN, stage, key, directory / name, _why_orphan(key, gone_sources)))
        records = workspace.records(stage)
        for key in sorted(set(records.keys()) - ids):
            found.append(Leftover(Kind.RECORD, stage, key, records.path, f"record of {key}: "
                                  + _why_orphan(key, gone_sources)))
    return found


def _why_orphan(key: str, gone_sources: dict[str, str]) -> str:
    if key in gone_sources:
        return f"orphan: its source {gone_sources[key]!r} is no longer configured"
    return "orphan: its URL row is no longer in urls.csv"


def _candidate_leftovers(workspace: Workspace) -> list[Leftover]:
    """The folders and records of training candidates no longer configured (and the single job's records
    once named candidates replace it): a clean build would not have them."""
    configured = workspace.candidates()
    names = {candidate.name for candidate in configured}
    found = []
    folder = workspace.config.artifacts / "candidates"
    for name in sorted(set(_names(folder)) - names):
        if not _is_temporary(name):
            found.append(Leftover(Kind.ORPHAN, "train", name, folder / name,
                                  f"orphan: candidate {name!r} is no longer in training.candidates"))
    if "" not in names:  # named candidates: the single job's records went with it
        for record in (workspace.config.artifacts / "training.json", workspace.config.artifacts / "model.json"):
            if record.is_file():
                found.append(Leftover(Kind.ORPHAN, "train", record.name, record,
                                      "orphan: training.candidates replaced the single training job"))
    for stage in ("train", "package"):
        keys = {candidate.key(stage) for candidate in configured}
        records = workspace.records(stage)
        for key in sorted(set(records.records) - keys):
            found.append(Leftover(Kind.RECORD, stage, key, records.path,
                                  f"record of {key}: that candidate is no longer configured"))
    return found


def _tree_leftovers(workspace: Workspace) -> list[Leftover]:
    """Temporaries in the artifact folder, its .state, and unfolded journals."""
    artifacts, state = workspace.config.artifacts, workspace.config.state_dir
    found = []
    record_folders = [state / name for name in _names(state) if (state / name).is_dir()]
    for directory in (artifacts, state, artifacts / "dataset", artifacts / "report", *record_folders):
        for name in sorted(_names(directory)):
            if _is_temporary(name):
                found.append(Leftover(Kind.TEMPORARY, "prune", name, directory / name,
                                      "temporary file of an interrupted build"))
    for name in sorted(_names(state)):
        if name.endswith(".journal"):
            stage = name.removesuffix(".journal")
            found.append(Leftover(Kind.JOURNAL, stage, stage, state / name, f"journal of an interrupted {stage} "
                                  f"step, not yet folded into {stage}.json"))
    for stage in workspace.recorded_stages():
        records = workspace.records(stage)
        wanted = shard_count(len(records.keys()), records.per_shard)
        if records.files and records.layout != wanted:
            found.append(Leftover(Kind.LAYOUT, stage, stage, records.folder if records.layout > 1 else records.path,
                                  f"records in {records.layout} file(s) where articles_per_shard = "
                                  f"{records.per_shard} gives {wanted}"))
    if _names(workspace.scratch_dir):
        found.append(Leftover(Kind.SCRATCH, "prune", "scratch", workspace.scratch_dir,
                              "work files of an interrupted step"))
    return found


def clean_key(workspace: Workspace) -> str:
    """What decides that nothing is left over: the names in every folder prune looks in (a folder's
    mtime changes with each file created, renamed or removed in it), the records files, the URL
    table and the configured sources. While it equals the key of the last look that found nothing,
    nothing is left over (at 100,000 articles, listing the folders was a sixth of a no-op)."""
    artifacts, state = workspace.config.artifacts, workspace.config.state_dir
    folders = [artifacts, state, artifacts / "dataset", artifacts / "report", workspace.scratch_dir,
               artifacts / "candidates", *(artifacts / stage for stage, _ in PER_ARTICLE)]
    record_folders = [state / name for name in _names(state) if (state / name).is_dir()]
    records = [state / name for name in _names(state)] + [folder / name for folder in record_folders
                                                          for name in _names(folder)]
    stamps: list[Any] = []
    for path in folders + records:
        with contextlib.suppress(OSError):
            info = path.stat()
            stamps.append([str(path), info.st_mtime_ns, info.st_size])
    sources = sorted(source.name for source in workspace.config.sources)
    candidates = [candidate.name for candidate in workspace.candidates()]
    return digest([stamps, workspace.hasher.digest(workspace.urls_csv), sources,
                   int(workspace.config.dataset["articles_per_shard"]), candidates])


def known_clean(workspace: Workspace) -> bool:
    """Whether the last look found nothing left over and nothing changed since (see ``clean_key``)."""
    return _remembered(workspace) == clean_key(workspace)


def still_clean(workspace: Workspace) -> None:
    """An action of a stage that declares its writes ran and finished while nothing was left over: its
    writes (its own articles' files, atomically, and its records) leave nothing over either."""
    _remember(workspace, clean_key(workspace))


def _remember(workspace: Workspace, key: str) -> None:
    with contextlib.suppress(OSError):  # a cache: an unwritable one only costs time
        atomic_write_text(workspace.config.cache_dir / "prune-clean", key)


def _remembered(workspace: Workspace) -> str | None:
    try:
        return (workspace.config.cache_dir / "prune-clean").read_text(encoding="utf-8")
    except OSError:
        return None


def find_leftovers(workspace: Workspace) -> list[Leftover]:
    """Everything ``prune`` would remove, in a stable order."""
    ids = {row.file_id for row in workspace.rows()}
    configured = {source.name for source in workspace.config.sources}
    gone_sources = {row.file_id: row.source for row, _ in workspace.table_rows() if row.source not in configured}
    return _tree_leftovers(workspace) + _candidate_leftovers(workspace) + _article_leftovers(workspace, ids,
                                                                                             gone_sources)


def remove_leftovers(workspace: Workspace, leftovers: list[Leftover]) -> None:
    """Remove them: files and folders deleted, records dropped, journals folded in."""
    stages = set()
    for leftover in leftovers:
        if leftover.kind is Kind.RECORD:
            workspace.records(leftover.stage).drop(leftover.key)
            stages.add(leftover.stage)
        elif leftover.kind in (Kind.JOURNAL, Kind.LAYOUT):
            stages.add(leftover.stage)  # loading the records replays a journal; committing folds it in
            if leftover.kind is Kind.LAYOUT:
                workspace.records(leftover.stage).read_all()  # every record read: the commit counts them anew
        elif leftover.kind is Kind.SCRATCH:
            empty_scratch(workspace.scratch_dir)
        elif leftover.path.is_dir() and not leftover.path.is_symlink():
            shutil.rmtree(leftover.path, ignore_errors=True)
        else:
            leftover.path.unlink(missing_ok=True)
    for stage in sorted(stages):
        workspace.records(stage).commit()
    folded = {leftover.stage for leftover in leftovers if leftover.kind is Kind.JOURNAL}
    if folded and workspace.name_identities is not None:
        # A killed run's records may name identities it had not saved yet (they are saved as a step
        # finishes): the steps' items name them before the settling (soak seed 16102: the prune step
        # folded the journal, settled, then the markdown step computed the identity and nothing settled
        # it again: identities.json lost it for good).
        workspace.name_identities(folded)
    workspace.settle_identities()  # the identities only the dropped records held go with them


def empty_scratch(scratch: Path) -> None:
    for name in _names(scratch):
        path = scratch / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def describe(workspace: Workspace, leftover: Leftover) -> str:
    relative = os.path.relpath(leftover.path, workspace.config.project_dir)
    return f"{leftover.kind} {relative}: {leftover.reason}"


class PruneStage(StageBase):
    name = "prune"
    doc = "remove orphans (articles no longer in the URL table) and leftovers of interrupted builds"

    def items(self, workspace: Workspace) -> list[Item]:
        return []  # nothing is built: what is stale is what is there and should not be

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        key = clean_key(workspace)
        if _remembered(workspace) == key:  # nothing left over when last looked, and nothing changed since
            return []
        leftovers = find_leftovers(workspace)
        if not leftovers:
            _remember(workspace, key)
        relisting = workspace.lists_pending()
        return [StaleItem(Item(leftover.key, {}, str(leftover.path)), f"{leftover.reason}; doit's prune step "
                          + ("lays them out again" if leftover.kind is Kind.LAYOUT else "removes it"),
                          derived=relisting and leftover.kind in (Kind.ORPHAN, Kind.RECORD),
                          owner=leftover.stage if leftover.stage != "prune" else "")
                for leftover in leftovers]

    def run(self, workspace: Workspace) -> StageResult:
        """Remove every leftover, saying what went."""
        leftovers = find_leftovers(workspace)
        remove_leftovers(workspace, leftovers)
        for leftover in leftovers:
            done = "laid out again" if leftover.kind is Kind.LAYOUT else "removed"
            say(f"prune: {done} {describe(workspace, leftover)}")
        return StageResult(self.name, built=len(leftovers))


STAGE = PruneStage()
