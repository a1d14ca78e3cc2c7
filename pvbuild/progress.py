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
        """``markdown: 120/500 done, 2 failed, 38.5/s, 0:03 elapsed, ETA 0:10``: the rate with three
        figures and only once a second has passed (an instant stage's rate means nothing), the
        remaining time from that rate, times formatted by tqdm."""
        from tqdm import tqdm

        elapsed = time.monotonic() - self.started
        parts = [f"{self.stage}: {self.done}/{self.total} done", f"{self.failed} failed"]
        if elapsed >= 1.0 and self.done:
            rate = self.done / elapsed
            parts.append(f"{rate:.3g}/s")
            parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
            if self.done < self.total:
                parts.append(f"ETA {tqdm.format_interval((self.total - self.done) / rate)}")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def _report(self, end: str) -> None:
        # A redrawn line is cleared to its end (ESC [K): a shorter line leaves no tail of the last one.
        line = f"\r{self._line()}\x1b[K" if self.live else self._line()
        print(line, end="" if self.live else end, file=self.stream, flush=True)
        if not self.live:
            self.printed_done = self.done

    def close(self) -> None:
        if self.live and self.done:
            self.stream.write("\n")  # keep the redrawn line, which shows the final counts
        elif self.total and self.printed_done != self.done:  # the final counts, unless just printed
            say(self._line(), self.stream)
