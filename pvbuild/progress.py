"""Progress lines for long stages (done/total, failures, rate) and the end-of-stage summary.

Progress goes to stderr so doit shows it while the action runs. On a terminal one line is
redrawn; otherwise a line is printed every few seconds. ``PVBUILD_QUIET=1`` prints only
failures and summaries (for CI).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def quiet() -> bool:
    return os.environ.get("PVBUILD_QUIET", "") not in ("", "0", "false", "no")


def say(message: str, stream: TextIO | None = None) -> None:
    """A line the user should always see (summaries, failures)."""
    print(message, file=stream or sys.stderr, flush=True)


class Progress:
    """Counts finished items of one stage and reports them."""

    def __init__(self, stage: str, total: int, stream: TextIO | None = None, interval: float = 2.0) -> None:
        self.stage = stage
        self.total = total
        self.stream = stream or sys.stderr
        self.done = 0
        self.failed = 0
        self.started = time.monotonic()
        self.interval = interval
        self.last_report = 0.0
        self.printed_done = -1  # how many were done at the last line printed (not redrawn)
        self.live = self.stream.isatty() and not quiet()
        self.note = ""  # shown after the counts (the current loss, a status)

    def advance(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.monotonic()
        if self.live or (not quiet() and now - self.last_report >= self.interval):
            self.last_report = now
            self._report(end="\r" if self.live else "\n")

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        note = f", {self.note}" if self.note else ""
        return (f"{self.stage}: {self.done}/{self.total} done, {self.failed} failed, "
                f"{rate:.1f}/s, {elapsed:.1f}s{note}")

    def _report(self, end: str) -> None:
        print(self._line(), end=end, file=self.stream, flush=True)
        if not self.live:
            self.printed_done = self.done

    def close(self) -> None:
        if self.live and self.done:
            self.stream.write("\n")  # keep the redrawn line, which shows the final counts
        elif self.total and self.printed_done != self.done:  # the final counts, unless just printed
            say(self._line(), self.stream)
