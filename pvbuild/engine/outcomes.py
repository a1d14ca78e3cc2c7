"""What a stage run produced: counts and per-item failures, kept for the end-of-run report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pvbuild.files import atomic_write_text


@dataclass(frozen=True)
class Failure:
    """One item that failed, where (URL or file) and why; it is retried on the next run, unless it is
    ``permanent`` (a page that is gone, HTTP 404 or 410): then only once its ``inputs`` (the URL row,
    the crawler) change, or with ``pvbuild build --retry-failed``."""

    key: str
    where: str
    reason: str
    permanent: bool = False
    inputs: dict[str, str | None] | None = None  # what the item was built from when it failed for good

    def __str__(self) -> str:
        return f"{self.key} ({self.where}): {self.reason}"


@dataclass
class StageResult:
    """Counts of one stage run and its failures."""

    stage: str
    built: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what else the user should know, e.g. rows left out

    def summary(self) -> str:
        counts = f"{self.stage}: {self.built} built, {self.skipped} up to date, {len(self.failures)} failed"
        return "; ".join([counts, *self.notes])

    def failure_lines(self) -> list[str]:
        """One line per failure, or, where more than three items failed for the same reason (every
        article on a 401), one line for all of them: the reason once, then which items."""
        return failure_lines(self.failures)


GROUPED = 3  # more failures than this with one reason share a line


NOT_ATTEMPTED = "not attempted: "  # the reason of an item skipped after an error that stops the stage


def failure_lines(failures: list[Failure]) -> list[str]:
    by_reason: dict[tuple[str, bool], list[Failure]] = {}
    for failure in failures:
        by_reason.setdefault((failure.reason.removeprefix(NOT_ATTEMPTED), failure.permanent), []).append(failure)
    lines = []
    for (reason, _), group in by_reason.items():
        when = (f"failed for good, {NOT_RETRIED}" if group[0].permanent else "failed, will retry next run")
        if len(group) <= GROUPED:
            lines += [f"{when}: {failure}" for failure in group]
            continue
        keys = ", ".join(failure.key for failure in group[:5]) + (", ..." if len(group) > 5 else "")
        skipped = sum(failure.reason.startswith(NOT_ATTEMPTED) for failure in group)
        after = f" ({skipped} not attempted after it)" if skipped else ""
        lines.append(f"{when}: {len(group)} items ({keys}): {reason}{after}")
    return lines


NOT_RETRIED = ("not retried until its URL row or crawler changes (`pvbuild build --retry-failed` tries again; "
               "sources.<name>.exclude leaves it out)")
RETRY_FAILED = "PVBUILD_RETRY_FAILED"  # set (by `pvbuild build --retry-failed`): permanent failures are tried again


def permanent_failures(cache_dir: Path, stage: str) -> dict[str, Failure]:
    """The stage's items that failed for good last time, by key; none when the user asked to retry them."""
    import os

    if os.environ.get(RETRY_FAILED, "") not in ("", "0"):
        return {}
    return {failure.key: failure for failure in load_failures(cache_dir, stage) if failure.permanent}


def common_reason(failures: list[Failure]) -> str:
    """The reason most of ``failures`` share (for a one-line summary)."""
    reasons = [failure.reason.removeprefix(NOT_ATTEMPTED) for failure in failures]
    return max(set(reasons), key=reasons.count) if reasons else ""


def failures_file(cache_dir: Path, stage: str) -> Path:
    return cache_dir / "failures" / f"{stage}.json"


def save_failures(cache_dir: Path, result: StageResult) -> None:
    """Remember this run's failures of the stage (an empty list clears the previous ones)."""
    data = [asdict(failure) for failure in result.failures]
    atomic_write_text(failures_file(cache_dir, result.stage), json.dumps(data, ensure_ascii=False, indent=1))


def load_failures(cache_dir: Path, stage: str) -> list[Failure]:
    path = failures_file(cache_dir, stage)
    if not path.is_file():
        return []
    return [Failure(**entry) for entry in json.loads(path.read_text(encoding="utf-8"))]
