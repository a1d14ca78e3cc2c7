"""Progress lines: counts, a rate with three figures once a second has passed, an ETA, and a redrawn
line cleared to its end on a terminal."""

from __future__ import annotations

import io
import time

import pytest

from pvbuild.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_an_instant_stage_shows_counts_without_a_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVBUILD_QUIET", raising=False)
    stream = io.StringIO()
    progress = Progress("conversations", 12, stream)
    for _ in range(12):
        progress.advance()
    progress.close()
    assert stream.getvalue().splitlines()[-1] == "conversations: 12/12 done, 0 failed"


def test_a_long_stage_shows_rate_elapsed_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVBUILD_QUIET", raising=False)
    stream = io.StringIO()
    progress = Progress("markdown", 400, stream, interval=0.0)
    progress.started = time.monotonic() - 10.0  # 100 articles in 10 s: 300 left take 30 s
    for _ in range(100):
        progress.advance(ok=True)
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("markdown: 100/400 done, 0 failed, 10/s, 00:10 elapsed, ETA 00:30"), line


def test_a_terminal_shows_a_tqdm_bar_with_eta_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVBUILD_QUIET", raising=False)
    stream = Terminal()
    progress = Progress("conversations", 4, stream)
    progress.note = "gpt-4o"
    progress.advance()
    progress.advance(ok=False)
    progress.advance()
    progress.advance()
    progress.close()
    frames = stream.getvalue().split("\r")
    assert frames[-1].startswith("conversations: 100%|") and "| 4/4 [" in frames[-1]
    assert "1 failed, gpt-4o" in frames[-1] and frames[-1].endswith("\n")  # the bar stays, with the final counts
    assert any("<" in frame for frame in frames)  # elapsed<remaining: the ETA


def test_report_numbers_are_rounded_for_people() -> None:
    from pvbuild.stages.report import for_people

    assert for_people(3.0669612884521484) == "3.067" and for_people(123456) == "123,456" and for_people("x") == "x"
