"""Work done in a forked child process while this one does other work, its result read back later.

Used where a fresh clone's check has independent work to share between cores: digesting files
(``engine.prehash``), parsing the URL table (``Workspace.read_table_elsewhere``) and one stage's
staleness pass (``staleness.examine_elsewhere``). A child that fails or is killed only costs
time: ``result`` is then None and the caller does the work itself.
Children exit with this process (a closed pipe ends them; Ctrl-C reaches them, as the same
process group), and ``result`` or ``stop`` always reaps them.
"""

from __future__ import annotations

import atexit
import contextlib
import marshal
import os
import signal
from collections.abc import Callable
from typing import Any

from pvbuild.files import marshalled


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def can_fork() -> bool:
    """Whether forking can share work: a second core, and ``fork`` itself."""
    return cores() >= 2 and hasattr(os, "fork")


class Forked:
    """``work()`` running in a forked child; its return value (marshal-able) comes back through a pipe."""

    def __init__(self, work: Callable[[], Any]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child(work, read_end, write_end)
        os.close(write_end)
        self.pid: int | None = pid
        self.read_end = read_end
        # A process forked from this one later (doit -n N) inherits this object but not the child.
        self.parent = os.getpid()
        atexit.register(self.stop)

    def result(self) -> Any | None:
        """The child's return value (waiting for it), or None when it failed; the child is reaped."""
        if self.pid is None or self.parent != os.getpid():
            return None
        try:
            with os.fdopen(self.read_end, "rb") as stream:
                data = stream.read()
            with contextlib.suppress(ValueError, EOFError, TypeError):  # a child that died mid-way
                return marshal.loads(data)
            return None
        finally:
            self._reap()

    def stop(self) -> None:
        """End a child whose result is not wanted (the caller failed or was interrupted)."""
        if self.pid is None or self.parent != os.getpid():
            return
        with contextlib.suppress(OSError):
            os.close(self.read_end)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGTERM)
        self._reap()

    def _reap(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None
            atexit.unregister(self.stop)


def _child(work: Callable[[], Any], read_end: int, write_end: int) -> None:
    """The child: only the default signal handlers, only its pipe, never the parent's exit handlers,
    and no traceback of its own (the parent does the work again and reports what is wrong)."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(read_end)
        data = marshalled(work())
        with os.fdopen(write_end, "wb") as stream:
            stream.write(data)
        status = 0
    except BaseException:  # noqa: BLE001, S110 - see the docstring: the parent does it again
        pass
    finally:
        os._exit(status)
