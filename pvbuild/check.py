"""``pvbuild check``: is every artifact up to date with its inputs, configuration and plugins?

It runs nothing and needs no network or credentials (unless ``--remote``): it reads the
committed records under ``artifacts/<profile>/.state`` and the files, and asks the same
``Pipeline.stale`` as doit. Staleness is transitive: a stale markdown makes its conversation
stale, and any stale item makes the dataset and every step after it stale. Exit codes follow
``make -q``: 0 up to date, 1 something is stale, 2 error (configuration, unreadable state).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pvbuild.pipeline import DATA_STAGES, MODEL_STAGES, STAGES, Pipeline, StaleItem
from pvbuild.records import EDITED

UP_TO_DATE, STALE = 0, 1
PER_ARTICLE = ("markdown", "conversations")
# Inputs that are digests of upstream outputs (the rest are configuration and plugin identities).
DERIVED_INPUTS = frozenset({"markdown", "conversations", "dataset", "data", "job", "model", "training"})


@dataclass(frozen=True)
class Finding:
    """One stale artifact: which, where, why, and the digests or keys behind the why."""

    stage: str
    key: str
    output: str
    reason: str
    changes: list[dict[str, Any]] = field(default_factory=list)


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
    """Collects the findings of one profile, stage by stage, in build order."""

    def __init__(self, pipeline: Pipeline, until: str | None = None) -> None:
        self.pipeline = pipeline
        self.stages = STAGES[:STAGES.index(until) + 1] if until else STAGES
        self.known = pipeline.identity_store.known()
        self.findings: list[Finding] = []

    def _relative(self, stale: StaleItem) -> str:
        return str(stale.item.output.relative_to(self.pipeline.config.project_dir))

    def _changes(self, stage: str, stale: StaleItem) -> list[dict[str, Any]]:
        record = self.pipeline.records(stage).get(stale.item.key) or {}
        old_inputs, new_inputs = record.get("inputs", {}), stale.item.inputs
        changes = []
        for name in sorted(set(old_inputs) | set(new_inputs)):
            old, new = old_inputs.get(name), new_inputs.get(name)
            if old == new:
                continue
            change: dict[str, Any] = {"input": name, "old": old, "new": new}
            if old is None or new is None:
                change["what"] = "added" if old is None else "removed"
            elif old in self.known and new in self.pipeline.identities:
                change["keys"] = _diff(self.known[old], self.pipeline.identities[new])
            changes.append(change)
        return changes

    def add(self, stage: str, stale: StaleItem, upstream: str | None = None) -> None:
        """A finding; with a stale ``upstream`` stage, an input change that comes only from upstream
        outputs is a "may": rebuilding upstream can give the same bytes (doit then stops there)."""
        changes = self._changes(stage, stale)
        reason = stale.reason
        if upstream and changes and all(change["input"] in DERIVED_INPUTS for change in changes):
            reason = f"upstream: {upstream} is stale ({reason})"
        self.findings.append(Finding(stage, stale.item.key, self._relative(stale), reason, changes))

    def leftovers(self, relisting: bool) -> None:
        """Orphans and leftovers of interrupted builds: the ``prune`` task removes them. While the URL
        table is about to be crawled again, which articles are orphans is a "may"."""
        from pvbuild.prune import Kind, find_leftovers

        project = self.pipeline.config.project_dir
        for leftover in find_leftovers(self.pipeline):
            reason = f"{leftover.reason}; doit's prune step removes it"
            if relisting and leftover.kind in (Kind.ORPHAN, Kind.RECORD):
                reason = f"upstream: urls is stale ({reason})"
            self.findings.append(Finding(leftover.stage, leftover.key, os.path.relpath(leftover.path, project),
                                         reason))

    def run(self) -> list[Finding]:
        changing: dict[str, set[str]] = {}  # per stage, the keys whose rebuild may change what follows
        for stage in self.stages:
            own = self.pipeline.stale(stage)
            upstream = [s for s in self.stages[:self.stages.index(stage)] if changing[s]]
            for entry in own:
                self.add(stage, entry, upstream[-1] if upstream and stage not in PER_ARTICLE else None)
            changing[stage] = {entry.item.key for entry in own if entry.propagates}
            if stage == "urls":
                self.leftovers(relisting=any(entry.reason != EDITED for entry in own))
            if stage == "conversations":  # a stale markdown makes its conversation stale
                for key in sorted(changing["markdown"] - {entry.item.key for entry in own}):
                    self._upstream(stage, key, f"upstream: markdown {key} is stale")
                    changing[stage].add(key)
            elif stage not in PER_ARTICLE and stage != "urls" and not own:
                upstream = [s for s in STAGES[:STAGES.index(stage)] if changing[s]]
                if upstream:
                    for item in self.pipeline.items(stage):
                        self.findings.append(Finding(stage, item.key, self._relative(StaleItem(item, "")),
                                                     f"upstream: {upstream[-1]} is stale"))
                    changing[stage] = {item.key for item in self.pipeline.items(stage)}
        return self.findings

    def _upstream(self, stage: str, key: str, reason: str) -> None:
        path = self.pipeline.conversation_path(key)
        self.findings.append(Finding(stage, key, str(path.relative_to(self.pipeline.config.project_dir)), reason))


def check(pipeline: Pipeline, until: str | None = None) -> list[Finding]:
    """The stale artifacts of the profile (of its stages up to ``until``, e.g. ``dataset``)."""
    pipeline.checking = True
    pipeline.hasher.remember()  # a check writes nothing
    findings = Checker(pipeline, until).run()
    with contextlib.suppress(OSError):  # a read-only checkout: the cache only saves time next run
        pipeline.hasher.save()
    return findings


def summary(findings: list[Finding], profile: str) -> str:
    if not findings:
        return f"pvbuild check: profile {profile}: every artifact is up to date"
    counts = Counter(finding.stage for finding in findings)
    lines = [f"pvbuild check: profile {profile}: {len(findings)} stale artifact(s)"]
    lines += [f"  {stage}: {counts[stage]}" for stage in ("prune", *DATA_STAGES, *MODEL_STAGES) if counts[stage]]
    lines.append("")
    for finding in findings:
        name = finding.stage if finding.key == finding.stage else f"{finding.stage} {finding.key}"
        lines.append(f"{name}: {finding.output}: {finding.reason}")
        for change in finding.changes:
            detail = ", ".join(change["keys"]) if change.get("keys") else change.get("what", "changed")
            lines.append(f"    {change['input']}: {detail} ({change['old']} -> {change['new']})")
    return "\n".join(lines)


def as_json(findings: list[Finding], profile: str) -> str:
    return json.dumps({"profile": profile, "up_to_date": not findings,
                       "stale": [asdict(finding) for finding in findings]}, ensure_ascii=False, indent=1)
