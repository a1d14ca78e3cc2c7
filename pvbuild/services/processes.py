"""Processes of the local services: is a pid alive, and is it really a ``pvbuild serve``."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_serve_process(pid: int | None) -> bool:
    """Whether ``pid`` is a ``pvbuild serve`` process (a pid may have been reused since it was recorded)."""
    try:
        command = Path(f"/proc/{int(pid or 0)}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return process_alive(pid)  # no /proc: trust the pid, as before
    return b"pvbuild" in command and b"serve" in command
