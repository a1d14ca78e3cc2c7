"""doit's console reporter, plus one closing line: how long the run took and how many steps ran."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from doit.reporter import ConsoleReporter

# The tasks named on doit's command line (or its default tasks), as doit tells its reporter: the
# stage actions read it to know whether the run goes on to the data gate.
SELECTED: list[str] = []
# Called when the run ends (the task module saves its machine-local caches here, once per run).
AT_END: list[Callable[[], None]] = []


class TimedReporter(ConsoleReporter):
    """Prints ``pvbuild: N step(s) ran, M up to date, in X s`` after every run."""

    def __init__(self, outstream: Any, options: Any) -> None:
        super().__init__(outstream, options)
        self.started = time.monotonic()
        self.ran = 0
        self.up_to_date = 0

    def initialize(self, tasks: Any, selected_tasks: list[str]) -> None:
        super().initialize(tasks, selected_tasks)
        SELECTED[:] = list(selected_tasks or [])

    def execute_task(self, task: Any) -> None:
        super().execute_task(task)
        self.ran += 1 if task.actions else 0

    def skip_uptodate(self, task: Any) -> None:
        super().skip_uptodate(task)
        self.up_to_date += 1

    def complete_run(self) -> None:
        for hook in AT_END:
            hook()
        super().complete_run()
        self.write(f"pvbuild: {self.ran} step(s) ran, {self.up_to_date} up to date, "
                   f"in {time.monotonic() - self.started:.1f}s\n")
