"""``pvbuild history``: the build's numbers over the commits that changed them, and what the last build
changed, from git's history of the committed ``report/metrics.json`` (as ``dvc metrics show -A`` and
``dvc plots diff``).

git is the run history: each committed build left its metrics there, so nothing is appended by the
build itself (a build still equals a clean build). The HTML page is written outside the artifact tree
(``.pvbuild/<profile>/history.html`` by default), on demand; the report shows the same sections through
a script beside it (``.pvbuild/<profile>/history.js``), which the end of each ``doit`` run that wrote
the report, and each ``pvbuild history``, write again.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvbuild.diff import compare, metrics_at, shown
from pvbuild.errors import PvbuildError
from pvbuild.files import atomic_write_text
from pvbuild.stages.report import HISTORY_STYLE, HOLDER, SIDECAR

LOSSES = ("training.train_loss", "training.validation_loss")


@dataclass(frozen=True)
class Build:
    """One committed build (or the working tree's, not yet committed): where, when, and its numbers."""

    revision: str  # short hash, or "workspace"
    date: str
    subject: str
    metrics: dict[str, Any]


def builds(project: Path, path: Path, last: int) -> list[Build]:
    """The last ``last`` commits that changed ``path``, oldest first, then the working tree's if it differs."""
    relative = path.relative_to(project).as_posix()
    try:
        log = subprocess.run(["git", "log", f"-n{last}", "--format=%H%x09%h%x09%cs%x09%s", "--", relative],
                             cwd=project, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise PvbuildError("pvbuild history reads committed metrics through git, which is not installed") from error
    if log.returncode != 0 and "does not have any commits yet" not in log.stderr:
        raise PvbuildError(f"git log -- {relative}: {log.stderr.strip() or 'not a git repository'}")
    found = []
    for line in reversed(log.stdout.splitlines() if log.returncode == 0 else []):
        full, short, date, subject = line.split("\t", 3)
        found.append(Build(short, date, subject, metrics_at(project, path, full)))
    now = metrics_at(project, path, None)
    if now and (not found or now != found[-1].metrics):
        found.append(Build("workspace", "", "not committed", now))
    return found


def as_rows(history: list[Build]) -> list[dict[str, Any]]:
    """Per build: its revision, date, subject, numbers, and what changed since the build before."""
    rows = []
    for index, build in enumerate(history):
        before = history[index - 1].metrics if index else {}
        rows.append({"revision": build.revision, "date": build.date, "subject": build.subject,
                     "metrics": build.metrics, "changed": compare(before, build.metrics) if index else []})
    return rows


def text(history: list[Build]) -> str:
    """One block per build: what changed since the one before (the first: its numbers)."""
    if not history:
        return "no build has committed report/metrics.json yet (build, then commit the artifacts)"
    blocks = []
    for index, row in enumerate(as_rows(history)):
        head = f"{row['revision']} {row['date']} {row['subject']}".strip()
        if index and not row["changed"]:
            blocks.append(f"{head}\n  no metric changed")
            continue
        changes = row["changed"] or [{"metric": name, "old": None, "new": value}
                                     for name, value in sorted(row["metrics"].items())]
        lines = [f"  {c['metric']}: {shown(c['old']) + ' -> ' if c['old'] is not None else ''}{shown(c['new'])}"
                 + (f" ({c['percent']:+.1f}%)" if "percent" in c else "") for c in changes]
        blocks.append("\n".join([head, *lines]))
    return "\n".join(blocks)


def _loss_plot(history: list[Build]) -> str:
    """The losses over the builds, as a PNG data URI ("" when no build has a loss)."""
    series = {name: [build.metrics.get(name) for build in history] for name in LOSSES}
    if not any(isinstance(value, int | float) for values in series.values() for value in values):
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3), dpi=100)
    labels = [build.revision for build in history]
    for name, values in series.items():
        points = [(i, v) for i, v in enumerate(values) if isinstance(v, int | float) and math.isfinite(v)]
        if points:
            axes.plot([i for i, _ in points], [v for _, v in points], "o-", label=name.removeprefix("training."))
    axes.set_xticks(range(len(labels)), labels, rotation=30, fontsize="small")
    axes.set_ylabel("loss")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _change(row: dict[str, Any]) -> str:
    """``+0.25 (+2.1%)``: the change of a metric and, where it means something, in percent."""
    found = shown(row["change"]) if "change" in row else ""
    return found + (f" ({row['percent']:+.1f}%)" if "percent" in row else "")


def sections(history: list[Build]) -> str:
    """The history as HTML sections: the builds, what the last one changed, the losses, every metric over
    the builds (changes marked)."""
    if not history:
        return "<p>No build has committed <code>report/metrics.json</code> yet: build, then commit the artifacts.</p>"
    names = sorted({name for build in history for name in build.metrics})
    head = "".join(f"<th>{html.escape(b.revision)}<br><small>{html.escape(b.date)}</small></th>" for b in history)
    rows = []
    for name in names:
        cells, before = [], None
        for index, build in enumerate(history):
            value = build.metrics.get(name)
            changed = index > 0 and value != before
            marked = ' class="changed"' if changed else ""
            cells.append(f"<td{marked}>{html.escape(shown(value))}</td>")
            before = value
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    last = compare(history[-2].metrics, history[-1].metrics) if len(history) > 1 else []
    diff_rows = "".join(f"<tr><th>{html.escape(c['metric'])}</th><td>{html.escape(shown(c['old']))}</td>"
                        f"<td>{html.escape(shown(c['new']))}</td><td>{html.escape(_change(c))}</td></tr>" for c in last)
    since = (f"{html.escape(history[-2].revision)} → {html.escape(history[-1].revision)}" if len(history) > 1
             else "one build only")
    plot = _loss_plot(history)
    subjects = "".join(f"<li><b>{html.escape(b.revision)}</b> {html.escape(b.date)} {html.escape(b.subject)}</li>"
                       for b in history)
    return f"""<ul>{subjects}</ul>
<h3>What the last build changed ({since})</h3>
<table class="history"><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>{diff_rows or
    '<tr><td colspan="4">no metric changed</td></tr>'}</table>
{f'<h3>Losses over the builds</h3><img src="{plot}" alt="losses over the builds">' if plot else ''}
<h3>Every metric over the builds (changed ones marked)</h3>
<table class="history"><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>
"""


def page(history: list[Build], profile: str) -> str:
    """The history as a page of its own (``pvbuild history --html``)."""
    return f"""<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>pvbuild history: {html.escape(profile)}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}th{{text-align:left;padding-right:1em}}
{HISTORY_STYLE}</style></head><body>
<h1>pvbuild run history: profile {html.escape(profile)}</h1>
{sections(history)}</body></html>
"""


def sidecar(history: list[Build], note: str) -> str:
    """A script that fills the report's history section (``HOLDER``) with ``sections(history)``."""
    body = f"<p><small>{html.escape(note)}</small></p>{sections(history)}"
    return ("// Written by pvbuild (the report's history section); rewritten by each build that writes the\n"
            "// report and by `pvbuild history`.\n"
            f"document.getElementById({json.dumps(HOLDER)}).innerHTML = {json.dumps(body, ensure_ascii=False)};\n")


def _now() -> str:
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")


def read_from_git() -> str:
    """The script's note for a history read from git just now."""
    return f"Read from git on {_now()}; a build that writes the report, and `pvbuild history`, read it again."


def save_sidecar(target: Path, history: list[Build], note: str) -> None:
    """Write the report's history script (``target``) for ``history``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, sidecar(history, note))


def write_sidecar(project: Path, metrics: Path, target: Path, last: int = 20) -> int:
    """Write the report's history script (``target``) from git's history of ``metrics``: the number of
    builds it shows. Without git history it says why, and shows the working tree's build."""
    try:
        history, note = builds(project, metrics, last), read_from_git()
    except (PvbuildError, ValueError) as error:  # not a repository, no git, a metrics file outside it
        now = metrics_at(project, metrics, None)
        history = [Build("workspace", "", "not committed", now)] if now else []
        note = f"No git history ({error}); the last build only, as of {_now()}."
    save_sidecar(target, history, note)
    return len(history)


def refresh_sidecar(project: Path, report_dir: Path, cache_dir: Path) -> None:
    """After a run: write the report's history script again when the report is newer than it (the run
    wrote the report) or it is missing. A cache: nothing here fails a build."""
    target, report = cache_dir / SIDECAR, report_dir / "report.html"
    try:
        if target.is_file() and target.stat().st_mtime_ns >= report.stat().st_mtime_ns:
            return
        write_sidecar(project, report_dir / "metrics.json", target)
    except (OSError, ValueError, PvbuildError):  # no report yet, an unwritable cache, an unreadable metrics file
        return
