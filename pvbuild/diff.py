"""``pvbuild diff [REV]``: what changed in the build's numbers (data counts, tokens, losses) between
a git revision and the working tree, from the committed ``report/metrics.json`` — like ``dvc metrics diff``."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any, TypeGuard

from pvbuild.errors import PvbuildError


def metrics_at(project: Path, path: Path, revision: str | None) -> dict[str, Any]:
    """The metrics file in the working tree (``revision`` None) or at a git revision ({} if absent)."""
    if revision is None:
        return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}
    relative = path.relative_to(project).as_posix()
    try:
        found = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=project, capture_output=True,
                               text=True, check=False)
    except FileNotFoundError as error:
        raise PvbuildError("pvbuild diff reads committed metrics through git, which is not installed") from error
    if found.returncode != 0:
        if "does not exist" in found.stderr or "exists on disk, but not in" in found.stderr:
            return {}
        raise PvbuildError(f"git show {revision}:{relative}: {found.stderr.strip()}")
    return dict(json.loads(found.stdout))


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric that differs: old, new and the change (absolute, and relative when it means something)."""
    rows = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        row: dict[str, Any] = {"metric": name, "old": before, "new": after}
        if _number(before) and _number(after):  # a flag (True/False) has no numeric change
            row["change"] = after - before
            if before:
                row["percent"] = round(100 * (after - before) / abs(before), 1)
        rows.append(row)
    return rows


def shown(value: Any) -> str:
    """A metric as people read it: four significant figures, thousands separated, '-' for none."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict[str, Any]], old_label: str, new_label: str) -> str:
    if not rows:
        return "no metric changed"
    lines = [f"{'metric':<32} {old_label:>12} {new_label:>12} {'change':>12}"]
    for row in rows:
        change = shown(row.get("change")) if "change" in row else ""
        if "percent" in row:
            change += f" ({row['percent']:+.1f}%)"
        lines.append(f"{row['metric']:<32} {shown(row['old']):>12} {shown(row['new']):>12} {change:>12}")
    return "\n".join(lines)
