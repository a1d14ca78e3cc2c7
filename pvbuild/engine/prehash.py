"""Look at the per-article files in worker processes while the build or check does its other work.

On a fresh clone there is no stat cache, so ``check`` must read and digest every markdown and
conversation file: at 100,000 articles, 200,000 files and a third of the check. Hashing is
independent of everything else the check does first (reading the URL table and the records), so
forked workers (``engine.forked``) digest the folders' files, one share each, and hand the
``FileHasher`` entries back (``prehash``); the check takes them when it first needs one of those files.
With a stat cache (a no-op build, one edited article, a warm check), every file is still statted:
200,000 stats and most of a no-op's time in one process while the machine's other core idled. There
a worker per folder stats the cached files while this process reads the table, the records and
the folders before (``prestat``), and hands back which still match the cache; it digests those that
changed. A worker that fails or is killed only costs time: whatever it did not hand back is looked
at in this process as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvbuild.engine.forked import Forked, can_fork, cores
from pvbuild.engine.hasher import FileHasher, Looked, read_all
from pvbuild.engine.records import digest_bytes

MIN_FILES = 2_000  # below this, forking costs more than it saves
Entries = dict[str, list[Any]]


def fork_min_files() -> int:
    """``MIN_FILES``, or ``PVBUILD_FORK_MIN_FILES``: the differential test sets 1, so that its small trees
    take the workers' paths too (they must change no finding and no artifact)."""
    value = os.environ.get("PVBUILD_FORK_MIN_FILES", "")
    return int(value) if value.isdigit() else MIN_FILES


Listing = list[tuple[str, list[str]]]  # each folder (an absolute path ending in a separator) and its files' names


class Prehash:
    """Workers digesting the files of ``listing`` (files under ``folders``, absolute paths ending in a
    separator) for a hasher rooted at ``prefix``: each worker every ``workers``-th file of each folder of
    the one listing, made before they fork, so that no worker walks and sorts the folders again."""

    def __init__(self, folders: Sequence[str], listing: Listing, prefix: str, workers: int) -> None:
        self.folders = tuple(folders)
        self.workers = [Forked(functools.partial(_digest_share, listing, prefix, share, workers))
                        for share in range(workers)]

    def collect(self) -> Looked:
        """Every entry the workers computed (waiting for them), and the workers reaped."""
        entries: Entries = {}
        try:
            for worker in self.workers:
                part = worker.result()
                if isinstance(part, dict):
                    entries.update(part)
        finally:
            self.stop()
        return Looked(entries)

    def stop(self) -> None:
        """End workers not collected (the check failed or was interrupted): none is left behind."""
        for worker in self.workers:
            worker.stop()
        self.workers = []


def prehash(hasher: FileHasher, folders: Sequence[Path], min_files: int | None = None) -> bool:
    """On a fresh clone (``hasher`` has no stat cache yet), start digesting the files of ``folders`` in
    worker processes; the hasher takes their entries when one of those files is first asked for.
    Whether workers started."""
    if hasher.knows_any(folders):
        return False
    prehash_rest(hasher, folders, frozenset(), min_files)
    return any(isinstance(waiting.work, Prehash) for waiting in hasher.pending)


def prehash_rest(hasher: FileHasher, folders: Sequence[Path], skip: frozenset[str] | set[str],
                 min_files: int | None = None) -> None:
    """``prehash`` of the files of ``folders`` but ``skip`` (keys, relative to the hasher's root, whose
    digests are known otherwise: git vouched for them)."""
    if not any(isinstance(waiting.work, Prehash) for waiting in hasher.pending):
        hasher.wait_for(start([str(folder).rstrip(os.sep) + os.sep for folder in folders], hasher.prefix, min_files,
                              skip))


def start(folders: Sequence[str], prefix: str, min_files: int | None = None,
          skip: frozenset[str] | set[str] = frozenset()) -> Prehash | None:
    """Workers for the files of ``folders`` but ``skip`` (keys relative to ``prefix``), when they are
    ``min_files`` or more and the machine has cores to spare."""
    if not can_fork():
        return None
    min_files = fork_min_files() if min_files is None else min_files
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


def _entry(name: str, directory: int) -> list[Any] | None:
    """The stat-cache entry (mtime, size, digest) of file ``name`` of the folder open as ``directory``, or
    None when it cannot be read (gone, unreadable, a folder where a file should be)."""
    try:
        descriptor = os.open(name, os.O_RDONLY, dir_fd=directory)
    except OSError:
        return None
    try:
        info = os.fstat(descriptor)
        return [info.st_mtime_ns, info.st_size, digest_bytes(read_all(descriptor, info.st_size))]
    except OSError:
        return None
    finally:
        os.close(descriptor)


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
                entry = _entry(name, directory)
                if entry is not None:  # else gone or unreadable: the check reports it when it gets there
                    entries[key + name] = entry
        finally:
            os.close(directory)
    return entries


class Prestat:
    """A worker statting the files under ``folder`` (a key prefix: relative to the root ``root``, ending in
    a separator) that the stat cache in ``cache_file`` knows. Forked before this process reads the cache:
    a child forked later shares a heap of 200,000 cache entries, and the copies on write that its and
    this process's reference counts then cause cost more system time than the stats it saves."""

    def __init__(self, cache_file: Path, root: str, folder: str) -> None:
        self.folders: tuple[str, ...] = (root + folder,)
        self.worker = Forked(functools.partial(_stat_cached, cache_file, root, folder))

    def collect(self) -> Looked:
        """What the worker found (waiting for it; nothing if it failed), and the worker reaped."""
        found = self.worker.result()
        if not (isinstance(found, tuple) and len(found) == 2):
            return Looked()
        changed, digests = found
        return Looked(changed, digests)

    def stop(self) -> None:
        self.worker.stop()


def prestat(cache_file: Path, root: Path, folders: Sequence[Path], min_files: int | None = None) -> list[Prestat]:
    """Workers statting the files of each of ``folders`` that the stat cache ``cache_file`` (of a hasher
    rooted at ``root``) knows, when it is large enough to hold ``min_files`` entries; for
    ``FileHasher.wait_for``. Call it before the hasher reads the cache (see ``Prestat``)."""
    min_files = fork_min_files() if min_files is None else min_files
    try:
        large = cache_file.stat().st_size >= min_files * _ENTRY_BYTES
    except OSError:
        return []
    if not large or not can_fork():
        return []
    prefix = str(root).rstrip(os.sep) + os.sep
    return [Prestat(cache_file, prefix, str(folder)[len(prefix):].rstrip(os.sep) + os.sep) for folder in folders
            if str(folder).startswith(prefix) and folder.is_dir()]


_ENTRY_BYTES = 100  # at least, marshalled: a path, an mtime, a size and a 64-digit digest


def _stat_cached(cache_file: Path, root: str, folder: str) -> tuple[Entries, dict[str, str | None]]:
    """``_stat_share`` of the entries of the stat cache in ``cache_file``."""
    import marshal

    entries = marshal.loads(cache_file.read_bytes())
    return _stat_share(root, folder, entries if isinstance(entries, dict) else {})


def _stat_share(root: str, folder: str, entries: Entries) -> tuple[Entries, dict[str, str | None]]:
    """The files of ``folder`` that ``entries`` knows, statted relative to the folder: (new entries of
    those that changed, read and digested; path -> digest of each, None for those gone). A file that
    cannot be statted or read is in neither: the asking process looks at it and reports what is wrong."""
    changed: Entries = {}
    digests: dict[str, str | None] = {}
    cut = len(folder)
    try:
        directory = os.open(root + folder, os.O_RDONLY)
    except OSError:
        return changed, digests
    stat = os.stat
    try:
        for key, entry in entries.items():
            if not key.startswith(folder):
                continue
            try:
                info = stat(key[cut:], dir_fd=directory)
            except FileNotFoundError:
                digests[root + key] = None
                continue
            except OSError:
                continue
            if entry[0] == info.st_mtime_ns and entry[1] == info.st_size:
                digests[root + key] = entry[2]
                continue
            found = _entry(key[cut:], directory)
            if found is not None:
                changed[key] = found
                digests[root + key] = found[2]
    finally:
        os.close(directory)
    return changed, digests
