"""Digest a fresh clone's per-article files in worker processes while the check does its other work.

On a fresh clone there is no stat cache, so ``check`` must read and digest every markdown and
conversation file: at 100,000 articles, 200,000 files and a third of the check. Hashing is
independent of everything else the check does first (reading the URL table and the records), so
forked workers (``engine.forked``) digest the folders' files, one share each, and hand the
``FileHasher`` entries back; the check takes them when it first needs one of those files. A
worker that fails or is killed only costs time: whatever it did not hand back is digested in the
checking process as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvbuild.engine.forked import Forked, can_fork, cores
from pvbuild.engine.hasher import FileHasher, read_all
from pvbuild.engine.records import digest_bytes

MIN_FILES = 2_000  # below this, forking costs more than it saves
Entries = dict[str, list[Any]]


class Prehash:
    """Workers digesting ``paths`` (files under ``folders``, absolute paths ending in a separator) for a
    hasher rooted at ``prefix``: each worker every ``workers``-th path of the one listing, made before
    they fork, so that no worker walks and sorts the folders again."""

    def __init__(self, folders: Sequence[str], paths: list[str], prefix: str, workers: int) -> None:
        self.folders = tuple(folders)
        self.workers = [Forked(functools.partial(_digest_share, paths, prefix, share, workers))
                        for share in range(workers)]

    def collect(self) -> Entries:
        """Every entry the workers computed (waiting for them), and the workers reaped."""
        entries: Entries = {}
        try:
            for worker in self.workers:
                part = worker.result()
                if isinstance(part, dict):
                    entries.update(part)
        finally:
            self.stop()
        return entries

    def stop(self) -> None:
        """End workers not collected (the check failed or was interrupted): none is left behind."""
        for worker in self.workers:
            worker.stop()
        self.workers = []


def prehash(hasher: FileHasher, folders: Sequence[Path], min_files: int = MIN_FILES) -> None:
    """On a fresh clone (``hasher`` has no stat cache yet), start digesting the files of ``folders`` in
    worker processes; the hasher takes their entries when one of those files is first asked for."""
    if not hasher.knows_any(folders):
        prehash_rest(hasher, folders, frozenset(), min_files)


def prehash_rest(hasher: FileHasher, folders: Sequence[Path], skip: frozenset[str] | set[str],
                 min_files: int = MIN_FILES) -> None:
    """``prehash`` of the files of ``folders`` but ``skip`` (keys, relative to the hasher's root, whose
    digests are known otherwise: git vouched for them)."""
    if hasher.pending is None:
        hasher.pending = start([str(folder).rstrip(os.sep) + os.sep for folder in folders], hasher.prefix, min_files,
                               skip)


def start(folders: Sequence[str], prefix: str, min_files: int = MIN_FILES,
          skip: frozenset[str] | set[str] = frozenset()) -> Prehash | None:
    """Workers for the files of ``folders`` but ``skip`` (keys relative to ``prefix``), when they are
    ``min_files`` or more and the machine has cores to spare."""
    if not can_fork():
        return None
    paths = _listing(folders, len(prefix), skip)
    return Prehash(folders, paths, prefix, workers=cores()) if len(paths) >= min_files else None


def _listing(folders: Sequence[str], cut: int, skip: frozenset[str] | set[str]) -> list[str]:
    """The files under ``folders``, in the order the directories list them, but those whose path less
    its first ``cut`` characters is in ``skip``. Not sorted: the workers share this one list, and a
    file added meanwhile is only one the checking process digests itself."""
    paths: list[str] = []
    pending = list(folders)
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    paths.append(entry.path)
    return [path for path in paths if path[cut:] not in skip] if skip else paths


def _digest_share(paths: list[str], prefix: str, share: int, shares: int) -> Entries:
    """The stat-cache entries of every ``shares``-th file of ``paths``, from the ``share``-th on."""
    cut = len(prefix)
    entries: Entries = {}
    for path in paths[share::shares]:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone, or unreadable: the check reports it when it gets there
        try:
            info = os.fstat(descriptor)
            entries[path[cut:]] = [info.st_mtime_ns, info.st_size, digest_bytes(read_all(descriptor, info.st_size))]
        except OSError:
            continue  # e.g. a folder where a file should be
        finally:
            os.close(descriptor)
    return entries
