"""``pvbuild check``: is every artifact up to date with its inputs, configuration and plugins?

It runs nothing and needs no network or credentials (unless ``--remote``): it reads the
committed records under ``artifacts/<profile>/.state`` and the files, and walks the stage catalog
with the same staleness engine as doit's tasks (``engine.staleness.walk``): a stale markdown makes
its conversation stale, and any stale item makes every later stage stale. No stage is named here. Exit codes follow
``make -q``: 0 up to date, 1 something is stale, 2 error (configuration, unreadable state).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pvbuild.engine import gitindex, staleness
from pvbuild.engine.forked import can_fork
from pvbuild.engine.prehash import prehash, prehash_rest
from pvbuild.engine.stage import Stage, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.stages.catalog import CATALOG, up_to, written_folders
from pvbuild.stages.gate import allowed_failures

UP_TO_DATE, STALE = 0, 1


@dataclass(frozen=True)
class Finding:
    """One stale artifact: which, where, why, and the digests or keys behind the why."""

    stage: str
    key: str
    output: str
    reason: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    excused: bool = False  # a failed article within dataset.max_failed: named, not stale


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    """The dotted keys whose values differ between two identities."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [name for key in sorted(set(old) | set(new), key=str)
                for name in _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [name for index, (a, b) in pairs for name in _diff(a, b, f"{path}[{index}]")]
    return [] if old == new else [path or "(value)"]


class Checker:
    """Turns the staleness engine's findings into reported ones: paths relative to the project and,
    for a changed configuration or plugin, the keys that changed."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.known = workspace.identity_store.known()

    def _changes(self, stage: str, stale: StaleItem) -> list[dict[str, Any]]:
        record = self.workspace.records(stage).get(stale.item.key) or {}
        old_inputs, new_inputs = record.get("inputs", {}), stale.item.inputs
        changes = []
        for name in sorted(set(old_inputs) | set(new_inputs)):
            old, new = old_inputs.get(name), new_inputs.get(name)
            if old == new:
                continue
            change: dict[str, Any] = {"input": name, "old": old, "new": new}
            if old is None or new is None:
                change["what"] = "added" if old is None else "removed"
            elif old in self.known and new in self.workspace.identities:
                change["keys"] = _diff(self.known[old], self.workspace.identities[new])
            changes.append(change)
        return changes

    def report(self, found: staleness.Finding) -> Finding:
        stale = found.stale
        reason = f"upstream: {found.upstream} is stale ({stale.reason})" if found.upstream else stale.reason
        output = os.path.relpath(stale.item.file, self.workspace.config.project_dir)
        changes = self._changes(found.stage, stale) if stale.item.inputs else []
        return Finding(found.stage, stale.item.key, output, reason, changes, found.excused)


def git_may_answer(workspace: Workspace, folders: list[Path]) -> bool:
    """A fresh clone (or one whose digests came from git last time) in a git working tree."""
    hasher = workspace.hasher
    return not (hasher.knows_any(folders) and not hasher.trusted_git) \
        and gitindex.in_repository(workspace.config.project_dir)


def ask_git(workspace: Workspace, folders: list[Path], digested: list[Path]) -> bool:
    """On a fresh clone in a git repository (``git_may_answer``), ask git which of the folders' files are
    as checked out (it answers while the check reads the table and the records); their digests then
    come from the records. Where git vouches for none the records know, the files of ``digested`` are
    digested by workers (``prehash``). Whether git was asked."""
    hasher, root = workspace.hasher, workspace.config.project_dir
    hasher.git = gitindex.start(root, [str(folder.relative_to(root)) for folder in folders])
    if hasher.git is None:
        return False
    hasher.known_blobs = workspace.recorded_blobs
    hasher.read_rest = lambda trusted: prehash_rest(hasher, digested, trusted)
    return True


def share_passes(workspace: Workspace, stages: tuple[Stage, ...]) -> None:
    """On a large fresh clone, the stages before the first per-article one (they read no article's file)
    are examined while the workers still digest the files, and the last per-article stage (the one with
    the most inputs per item) in a forked process while this one examines the others. The URL table,
    git's answer and the workers' digests are taken before the fork: the child must not wait for them."""
    per_article = [index for index, stage in enumerate(stages) if stage.per_article]
    if len(per_article) < 2 or not can_fork():
        return
    workspace.rows()
    staleness.examine_now(workspace, stages[:per_article[0]])
    workspace.hasher.settle()
    staleness.examine_elsewhere(workspace, stages[per_article[-1]])


def check(workspace: Workspace, until: str | None = None, catalog: tuple[Stage, ...] = CATALOG) -> list[Finding]:
    """The stale artifacts of the profile (of its stages up to ``until``, e.g. ``data``)."""
    workspace.checking = True
    workspace.hasher.remember()  # a check writes nothing
    stages = up_to(until, catalog)
    folders = written_folders(workspace.config, stages)
    # The folders whose files workers digest: not those of a stage that reads its own by cheaper digests.
    digested = written_folders(workspace.config, tuple(stage for stage in stages if not stage.self_checked(workspace)))
    # With git, the table is parsed elsewhere (forked before git's reader threads start) while this
    # process reads the records; without, the cores digest the files meanwhile. Either way a large
    # fresh clone's records are read first (those no summary vouches for), and its passes are shared
    # (share_passes).
    git = git_may_answer(workspace, folders)
    table_elsewhere = git and workspace.read_table_elsewhere()
    git = git and ask_git(workspace, folders, digested)
    hashing = not git and prehash(workspace.hasher, digested)
    large_and_fresh = table_elsewhere or hashing
    # Records, rows and items by the hundred thousand, none of them cyclic: the cycle collector would
    # only cost time (0.2 s of parsing 100,000 articles' records).
    gc.disable()
    try:
        if large_and_fresh:
            # The shards that no summary vouches for (the others need not be parsed; with git, their blob
            # ids are read off their lines): read while the table is parsed elsewhere or the files digested.
            for stage in stages:
                if stage.per_article:
                    workspace.records(stage.name).read_unsummarised()
            share_passes(workspace, stages)
        checker = Checker(workspace)
        excused = frozenset(entry.item.key.partition(":")[2] for entry in allowed_failures(workspace))
        findings = [checker.report(found) for found in staleness.walk(workspace, stages, excused)]
    finally:
        # What was read is still alive: frozen, it stays out of the collections to come, which would
        # otherwise traverse all of it once the collector is on again (0.2 s at 100,000 articles) to free
        # nothing (the records hold no cycles; they are freed as usual once unreferenced).
        gc.freeze()
        gc.enable()
        for child in workspace.elsewhere.values():  # not asked for: the walk failed
            child.stop()
    with contextlib.suppress(OSError):  # a read-only checkout: the cache only saves time next run
        workspace.hasher.save()
    return findings


def stale_ones(findings: list[Finding]) -> list[Finding]:
    """The findings that make the profile stale (excused failures do not)."""
    return [finding for finding in findings if not finding.excused]


def _excused_lines(findings: list[Finding]) -> list[str]:
    excused = [finding for finding in findings if finding.excused]
    if not excused:
        return []
    return ["", f"failed, and allowed by dataset.max_failed ({len(excused)}):",
            *(f"  {finding.stage} {finding.key}: {finding.output}: {finding.reason}" for finding in excused)]


def summary(all_findings: list[Finding], profile: str) -> str:
    findings = stale_ones(all_findings)
    if not findings:
        return "\n".join([f"pvbuild check: profile {profile}: every artifact is up to date",
                          *_excused_lines(all_findings)])
    counts = Counter(finding.stage for finding in findings)
    lines = [f"pvbuild check: profile {profile}: {len(findings)} stale artifact(s)"]
    lines += [f"  {stage.name}: {counts[stage.name]}" for stage in CATALOG if counts[stage.name]]
    lines.append("")
    for finding in findings:
        name = finding.stage if finding.key == finding.stage else f"{finding.stage} {finding.key}"
        lines.append(f"{name}: {finding.output}: {finding.reason}")
        for change in finding.changes:
            detail = ", ".join(change["keys"]) if change.get("keys") else change.get("what", "changed")
            lines.append(f"    {change['input']}: {detail} ({change['old']} -> {change['new']})")
    return "\n".join(lines + _excused_lines(all_findings))


def as_json(findings: list[Finding], profile: str) -> str:
    stale = stale_ones(findings)
    return json.dumps({"profile": profile, "up_to_date": not stale,
                       "stale": [asdict(finding) for finding in stale],
                       "failed_allowed": [asdict(finding) for finding in findings if finding.excused]},
                      ensure_ascii=False, indent=1)
