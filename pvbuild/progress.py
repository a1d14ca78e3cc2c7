"""Progress lines for long stages (done/total, failures, rate) and the end-of-stage summary.

Progress goes to stderr so doit shows it while the action runs. On a terminal it is a tqdm bar
(percentage, counts, elapsed and ETA, rate, failures and the stage's note); otherwise a plain line
is printed every few seconds. ``PVBUILD_QUIET=1`` prints only failures and summaries (for CI).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def quiet() -> bool:
    return os.environ.get("PVBUILD_QUIET", "") not in ("", "0", "false", "no")


def say(message: str, stream: TextIO | None = None) -> None:
    """A line the user should always see (summaries, failures)."""
    print(message, file=stream or sys.stderr, flush=True)


def _has_width(stream: TextIO) -> bool:
    """Whether the terminal has columns to draw a bar in (a pseudo-terminal of 0 columns shows nothing)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's stream): assume it has
        return True


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
        self.live = self.stream.isatty() and not quiet() and _has_width(self.stream)
        self.note = ""  # shown after the counts (the current loss, a status)
        self.bar: Any = None
        if self.live:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=stage, file=self.stream, unit="item", dynamic_ncols=True, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} "
                                       "[{elapsed}<{remaining}, {rate_fmt}]{postfix}")

    def advance(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self.bar is not None:
            postfix = ", ".join(part for part in (f"{self.failed} failed" if self.failed else "", self.note) if part)
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if not quiet() and now - self.last_report >= self.interval:
            self.last_report = now
            self._report()

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

    def _report(self) -> None:
        print(self._line(), file=self.stream, flush=True)
        self.printed_done = self.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # the bar stays, with the final counts
        elif self.total and self.printed_done != self.done:  # the final counts, unless just printed
            say(self._line(), self.stream)
