"""The one staleness engine: which items of a stage are stale and why (what doit's up-to-date checks
ask), the build's explicit adoption of hand edits, and the transitive view over a list of stages
(what ``pvbuild check`` reports). No stage is named here."""

from __future__ import annotations

import contextlib
import marshal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvbuild.engine.forked import Forked
from pvbuild.engine.records import EDITED, Item, digest, keys_in_files, records_files, stale_items
from pvbuild.engine.stage import Fingerprint, Stage, StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.files import atomic_write_bytes, marshalled
from pvbuild.progress import say


def stale(workspace: Workspace, stage: Stage) -> list[StaleItem]:
    """The stage's stale items: its records against its items, then the stage's own reasons. In an
    action, the pass of the up-to-date check just before is taken when nothing was written since."""
    found = workspace.prechecked.pop(stage.name, None)
    if found is None:
        found = [] if _up_to_date_elsewhere(workspace, stage) else _stale(workspace, stage)
        workspace.passes[stage.name] = (workspace.writes_seen, found)
    return list(found)


def examine_elsewhere(workspace: Workspace, stage: Stage) -> None:
    """Start the stage's pass in a forked process (``engine.forked``) while this one examines the stages
    before it: a fresh clone's check shares its passes between two cores. The child answers only
    whether the stage is up to date (and how many items it has); anything stale is examined again
    here by ``stale``, which also reports it, so nothing a pass leaves in the workspace is lost.
    Call it once what every pass reads is read (records, URL table, ``FileHasher.settle``)."""
    def up_to_date() -> int | None:
        return None if _stale(workspace, stage) else workspace.item_counts.get(stage.name, 0)
    workspace.elsewhere[stage.name] = Forked(up_to_date)


def examine_now(workspace: Workspace, stages: Sequence[Stage]) -> None:
    """Make the passes of ``stages`` now, kept for ``stale`` to take while nothing is written (a fresh
    clone's check examines the stages that read no article's file while workers digest the files)."""
    for stage in stages:
        workspace.prechecked[stage.name] = stale(workspace, stage)


def _up_to_date_elsewhere(workspace: Workspace, stage: Stage) -> bool:
    """Whether a pass started by ``examine_elsewhere`` found the stage up to date."""
    child = workspace.elsewhere.pop(stage.name, None)
    count = child.result() if child is not None else None
    if not isinstance(count, int):
        return False
    workspace.item_counts[stage.name] = count
    return True


def to_build(workspace: Workspace, stage: Stage) -> list[StaleItem]:
    """What a stage of a few items rebuilds: its stale items, or under ``doit -a`` every item (a training
    candidate then re-attaches to its completed job)."""
    found = stale(workspace, stage)
    return found or ([StaleItem(item, "forced") for item in stage.items(workspace)] if workspace.forced else [])


# A memo's column value for a key found stale: no digest equals it, so the next pass examines the key again.
UNSETTLED = "\0stale"


def _stale(workspace: Workspace, stage: Stage) -> list[StaleItem]:
    fingerprint = stage.fingerprint(workspace)
    if fingerprint is None:
        items = stage.items(workspace)
        workspace.item_counts[stage.name] = len(items)
        return _examine(workspace, stage, items)
    memo = workspace.config.cache_dir / "clean" / f"{stage.name}.marshal"
    files = records_files(workspace.config.state_dir, stage.name)
    context = digest([fingerprint.context, sorted(name for name in files if name.endswith(".journal"))])
    last = _read_memo(memo)
    if last is not None and last["context"] == context and last["keys"] == fingerprint.keys \
            and len(last["columns"]) == len(fingerprint.columns):
        keys = _changed_keys(fingerprint, last, files)
        items = stage.items_for(workspace, keys) if keys else []
    else:
        items = _unvouched_items(workspace, stage, fingerprint)
    compared = _compare(workspace, stage, items)
    found = stage.refine(workspace, items, compared)
    workspace.item_counts[stage.name] = fingerprint.count
    # Kept whether or not something is stale, with the stale keys marked: the next pass examines them
    # and whatever changed after this one. (Kept only once nothing was stale, the memo aged with each
    # edit: each run after it examined again every records shard written since the last clean pass.)
    unsettled = {entry.item.key for entry in compared} | {entry.item.key for entry in found}
    columns = _marked(fingerprint, unsettled)
    now = {"context": context, "keys": fingerprint.keys, "columns": columns, "files": files}
    if columns is not None and now != last:
        with contextlib.suppress(OSError, ValueError):
            atomic_write_bytes(memo, marshalled(now))
    return found


def _unvouched_items(workspace: Workspace, stage: Stage, fingerprint: Fingerprint) -> list[Item]:
    """Every item of the stage, but those that its records' summaries vouch for (``StageRecords.vouched``:
    on a fresh clone, the shards whose items are as recorded are neither parsed nor compared)."""
    columns = fingerprint.items
    settled = workspace.records(stage.name).vouched(columns) if columns is not None else set()
    if columns is None or not settled:
        return stage.items(workspace)
    return stage.items_for(workspace, set(columns.keys).difference(settled))


def _marked(fingerprint: Fingerprint, unsettled: set[str]) -> list[list[str | None]] | None:
    """The fingerprint's columns, with ``UNSETTLED`` as the first column's value of each unsettled key
    (None when there is no column to mark, or a key to mark is not one of the fingerprint's)."""
    if not unsettled:
        return fingerprint.columns
    if not fingerprint.columns:
        return None
    first = [UNSETTLED if key in unsettled else value
             for key, value in zip(fingerprint.keys, fingerprint.columns[0], strict=True)]
    return [first, *fingerprint.columns[1:]] if first.count(UNSETTLED) == len(unsettled) else None


def _changed_keys(fingerprint: Fingerprint, last: dict[str, Any], files: dict[str, list[int]]) -> set[str]:
    """The keys whose column values, or whose records file, changed since the stage's last pass, and
    those it found stale (the others were up to date then, and nothing they depend on changed)."""
    keys = fingerprint.keys
    changed: set[str] = set()
    for now, before in zip(fingerprint.columns, last["columns"], strict=True):
        if now != before:
            changed.update(key for key, value, old in zip(keys, now, before, strict=True) if value != old)
    moved = {name for name in set(files) | set(last["files"]) if files.get(name) != last["files"].get(name)}
    if moved:
        changed.update(keys_in_files(keys, files, moved))
    return changed


def _examine(workspace: Workspace, stage: Stage, items: list[Item]) -> list[StaleItem]:
    """Each item against its record, then the stage's own reasons."""
    return stage.refine(workspace, items, _compare(workspace, stage, items))


def _compare(workspace: Workspace, stage: Stage, items: list[Item]) -> list[StaleItem]:
    """The items whose record does not match them (their inputs, or their output's digest)."""
    if not items and stage.per_article:  # nothing to look at: its records need not even be read
        return []
    files = [item.file for item in items]
    outputs = list(map(_record_digest(workspace, stage), files)) if stage.record_output \
        else workspace.hasher.digests(files)
    return [StaleItem(item, reason) for item, reason in stale_items(items, workspace.records(stage.name), outputs)]


def _read_memo(path: Path) -> dict[str, Any] | None:
    try:
        memo = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return memo if isinstance(memo, dict) and {"context", "keys", "columns", "files"} <= set(memo) else None


def _record_digest(workspace: Workspace, stage: Stage) -> Callable[[str], str | None]:
    """Digests of JSON-record outputs without their volatile fields; a record written by pvbuild 0.1,
    which digested the whole file, still matches the file it recorded (no retraining on upgrade)."""
    recorded = {record.get("output") for record in workspace.records(stage.name).records.values()}

    def digest_of(file: str) -> str | None:
        stable = workspace.output_digest(file)
        if stable in recorded:
            return stable
        legacy = workspace.hasher.digest(file)  # read again only when the stable digest does not match
        return legacy if legacy in recorded else stable
    return digest_of


def adopt_edits(workspace: Workspace, stage: Stage) -> list[StaleItem]:
    """The build's explicit first step of a stage that keeps hand edits (make semantics): record each
    edited output as built, so its dependents rebuild from it. Returns what is left to build."""
    found = stale(workspace, stage)
    if not stage.keeps_edits:
        return found
    kept = [entry.item for entry in found if entry.reason == EDITED]
    if kept:
        workspace.rewrote(stage.name, kept)
        say(f"{stage.name}: kept {len(kept)} hand-edited file(s): " + ", ".join(item.key for item in kept[:5])
            + (" ..." if len(kept) > 5 else ""))
    return [entry for entry in found if entry.reason != EDITED]


@dataclass(frozen=True)
class Finding:
    """A stale item as the whole graph sees it: ``upstream`` names the stale stage it follows from
    when the finding is a "may" (rebuilding upstream can give the same bytes, and doit stops there)."""

    stage: str
    stale: StaleItem
    upstream: str | None = None
    excused: bool = False  # a failed article the model half may go on without (dataset.max_failed)


def _only_derived(workspace: Workspace, stage: Stage, entry: StaleItem) -> bool:
    """Whether the entry's changed inputs are all upstream outputs (no configuration changed)."""
    if entry.derived:
        return True
    record = workspace.records(stage.name).get(entry.item.key)
    if record is None or not stage.derived_inputs:
        return False
    recorded = record.get("inputs", {})
    changed = {name for name in set(entry.item.inputs) | set(recorded)
               if entry.item.inputs.get(name) != recorded.get(name)}
    return bool(changed) and changed <= stage.derived_inputs


def walk(workspace: Workspace, stages: Sequence[Stage], excused: frozenset[str] = frozenset()) -> list[Finding]:
    """Every stale item of ``stages`` (in order), own and transitive: a stale per-article item makes
    the same key of the next per-article stage stale; any stale stage makes every later stage stale.
    The per-article items of ``excused`` keys (failed articles within dataset.max_failed) are found
    as excused and make nothing after them stale."""
    findings: list[Finding] = []
    changing: dict[str, set[str]] = {}  # per stage, the keys whose rebuild may change what follows
    previous_per_article: Stage | None = None
    rebuilt: dict[str, set[str]] = {}  # per stage, the keys that will be built again (not just adopted)
    # Each stage's own pass, those made in a forked process (``examine_elsewhere``) taken last, so that
    # this process works meanwhile: the passes read the workspace, and nothing is written in between.
    passes = {stage.name: stale(workspace, stage)
              for stage in sorted(stages, key=lambda stage: stage.name in workspace.elsewhere)}
    for index, stage in enumerate(stages):
        own = passes[stage.name]
        if stage.per_article and excused:
            findings += [Finding(stage.name, entry, excused=True) for entry in own if entry.item.key in excused]
            own = [entry for entry in own if entry.item.key not in excused]
        upstream = [s.name for s in stages[:index] if changing.get(s.name)]
        for entry in own:
            if stage.per_article and previous_per_article is not None:
                # The same key upstream is rebuilt first: what this item sees now may not be what it will see.
                source = previous_per_article.name
                may = entry.item.key in rebuilt[source] and _only_derived(workspace, stage, entry)
            else:
                source = upstream[-1] if upstream else ""
                may = bool(upstream) and not stage.per_article and _only_derived(workspace, stage, entry)
            findings.append(Finding(entry.owner or stage.name, entry, source if may else None))
        rebuilt[stage.name] = {entry.item.key for entry in own if entry.reason != EDITED}
        changing[stage.name] = {entry.item.key for entry in own if entry.propagates}
        own_keys = {entry.item.key for entry in own}
        if stage.per_article and previous_per_article is not None:
            for key in sorted(changing[previous_per_article.name] - own_keys):
                item_file = stage.file(workspace, key)
                entry = StaleItem(Item(key, {}, item_file), f"upstream: {previous_per_article.name} {key} is stale")
                findings.append(Finding(stage.name, entry))
                changing[stage.name].add(key)
        elif not stage.per_article and not own and upstream:
            for item in stage.items(workspace):
                findings.append(Finding(stage.name, StaleItem(item, f"upstream: {upstream[-1]} is stale")))
                changing[stage.name].add(item.key)
        if stage.per_article:
            previous_per_article = stage
    return findings
