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


Listing = list[tuple[str, list[str]]]  # each folder (an absolute path ending in a separator) and its files' names


class Prehash:
    """Workers digesting the files of ``listing`` (files under ``folders``, absolute paths ending in a
    separator) for a hasher rooted at ``prefix``: each worker every ``workers``-th file of each folder of
    the one listing, made before they fork, so that no worker walks and sorts the folders again."""

    def __init__(self, folders: Sequence[str], listing: Listing, prefix: str, workers: int) -> None:
        self.folders = tuple(folders)
        self.workers = [Forked(functools.partial(_digest_share, listing, prefix, share, workers))
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
    listing = _listing(folders, len(prefix), skip)
    files = sum(len(names) for _, names in listing)
    return Prehash(folders, listing, prefix, workers=cores()) if files >= min_files else None


def _listing(folders: Sequence[str], cut: int, skip: frozenset[str] | set[str]) -> Listing:
    """The files under ``folders``, folder by folder, in the order the directories list them, but those
    whose path less its first ``cut`` characters is in ``skip``. Not sorted: the workers share this one
    list, and a file added meanwhile is only one the checking process digests itself."""
    listing: Listing = []
    pending = list(folders)
    while pending:
        folder = pending.pop()
        names = []
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path + os.sep)
                else:
                    names.append(entry.name)
        relative = folder[cut:]
        listing.append((folder, [name for name in names if relative + name not in skip] if skip else names))
    return listing


def _digest_share(listing: Listing, prefix: str, share: int, shares: int) -> Entries:
    """The stat-cache entries of every ``shares``-th file of each folder of ``listing``, from the
    ``share``-th on. Opened relative to their folder: no walk down the whole path for each file."""
    cut = len(prefix)
    entries: Entries = {}
    for folder, names in listing:
        try:
            directory = os.open(folder, os.O_RDONLY)
        except OSError:
            continue  # gone: the check reports what is missing when it gets there
        try:
            key = folder[cut:]
            for name in names[share::shares]:
                try:
                    descriptor = os.open(name, os.O_RDONLY, dir_fd=directory)
                except OSError:
                    continue  # gone, or unreadable: the check reports it when it gets there
                try:
                    info = os.fstat(descriptor)
                    entries[key + name] = [info.st_mtime_ns, info.st_size,
                                           digest_bytes(read_all(descriptor, info.st_size))]
                except OSError:
                    continue  # e.g. a folder where a file should be
                finally:
                    os.close(descriptor)
        finally:
            os.close(directory)
    return entries
