"""engine.forked: work done in a forked child comes back; a child that fails costs only its result."""

from __future__ import annotations

import os
import time

import pytest

from pvbuild.engine.forked import Forked
from tests.test_prehash import children

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")


def test_the_result_comes_back_and_the_child_is_reaped() -> None:
    before = children()
    worker = Forked(lambda: {"pid": os.getpid(), "rows": [("a", "b")] * 3})
    found = worker.result()
    assert found is not None and found["rows"] == [("a", "b")] * 3 and found["pid"] != os.getpid()
    assert children() == before and worker.result() is None  # asked twice: nothing more


def test_a_child_that_raises_gives_none_and_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    def fails() -> None:
        raise ValueError("no such table")
    assert Forked(fails).result() is None
    assert Forked(lambda: object()).result() is None  # not marshal-able
    assert "no such table" not in capfd.readouterr().err


def test_a_child_not_waited_for_is_stopped() -> None:
    before = children()
    worker = Forked(lambda: time.sleep(60))
    worker.stop()
    assert children() == before
