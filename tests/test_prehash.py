"""engine.prehash: a fresh clone's files digested by forked workers, the same digests, no process left."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pvbuild.engine import prehash
from pvbuild.engine.hasher import FileHasher

several_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="workers start only with 2 cores or more")


def children() -> set[int]:
    """This process's live (not zombie) children."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            status = Path(f"/proc/{pid}/stat").read_text()
            if status.split(")")[-1].split()[0] != "Z":
                found.add(int(pid))
    return found


def tree(root: Path) -> list[Path]:
    files = []
    for index in range(40):
        folder = root / "artifacts" / ("markdown" if index % 2 else "dataset/train")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.md"
        path.write_bytes(f"# {index}\n".encode() * (index + 1))
        files.append(path)
    return files


@several_cores
def test_the_workers_digest_every_file_as_the_hasher_does(tmp_path: Path) -> None:
    files = tree(tmp_path)
    before = children()
    hasher = FileHasher(None, tmp_path)
    hasher.remember()
    prehash.prehash(hasher, [tmp_path / "artifacts" / "markdown", tmp_path / "artifacts" / "dataset"], min_files=1)
    [waiting] = hasher.pending
    assert isinstance(waiting.work, prehash.Prehash) and len(waiting.work.workers) >= 2
    assert hasher.digests([str(path) for path in files]) == [FileHasher(None, tmp_path).digest(path) for path in files]
    assert not hasher.pending and len(hasher.entries) == len(files), "one entry per file, from the workers"
    assert children() == before, "the workers are reaped"


def test_few_files_start_no_worker(tmp_path: Path) -> None:
    tree(tmp_path)
    assert prehash.start([str(tmp_path / "artifacts" / "markdown") + os.sep], str(tmp_path) + os.sep) is None


@several_cores
def test_a_killed_worker_costs_time_not_correctness(tmp_path: Path) -> None:
    files = tree(tmp_path)
    started = prehash.start([str(tmp_path / "artifacts") + os.sep], str(tmp_path) + os.sep, min_files=1)
    assert started is not None
    os.kill(started.workers[0].pid, signal.SIGKILL)  # type: ignore[arg-type]
    hasher = FileHasher(None, tmp_path)
    hasher.wait_for(started)
    assert hasher.digests([str(path) for path in files]) == [FileHasher(None, tmp_path).digest(path) for path in files]


@several_cores
def test_workers_not_waited_for_are_stopped(tmp_path: Path) -> None:
    tree(tmp_path)
    before = children()
    hasher = FileHasher(tmp_path / "cache.marshal", tmp_path)
    prehash.prehash(hasher, [tmp_path / "artifacts"], min_files=1)
    hasher.save()  # nothing asked for those files (e.g. `check --until urls`)
    deadline = time.monotonic() + 5
    while children() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children() == before


@several_cores
def test_skipped_files_and_files_added_after_the_listing_are_left_to_the_checking_process(tmp_path: Path) -> None:
    files = tree(tmp_path)
    skipped = {os.path.relpath(files[0], tmp_path)}  # git vouched for it: its digest comes from the records
    started = prehash.start([str(tmp_path / "artifacts") + os.sep], str(tmp_path) + os.sep, min_files=1,
                            skip=skipped)
    assert started is not None
    late = tmp_path / "artifacts" / "markdown" / "late.md"
    late.write_text("# written after the workers forked\n")
    entries = started.collect().entries
    assert set(entries) == {os.path.relpath(path, tmp_path) for path in files[1:]}, "each listed file once"
    assert [entries[os.path.relpath(path, tmp_path)][2] for path in files[1:]] == \
        [FileHasher(None, tmp_path).digest(path) for path in files[1:]]


def cached_tree(root: Path) -> tuple[list[Path], Path]:
    """``tree``'s files, each digested once by a hasher whose stat cache is then saved."""
    files = tree(root)
    cache = root / "cache.marshal"
    hasher = FileHasher(cache, root)
    hasher.digests([str(path) for path in files])
    hasher.save()
    return files, cache


def change(files: list[Path]) -> None:
    """One file rewritten (a new size), one removed; the others as the cache saw them."""
    files[1].write_bytes(b"# rewritten since the cache saw it\n")
    files[3].unlink()


@several_cores
def test_prestat_workers_find_what_the_hasher_finds_and_digest_only_the_changed_files(tmp_path: Path) -> None:
    files, cache = cached_tree(tmp_path)
    change(files)
    before = children()
    folders = [tmp_path / "artifacts" / "markdown", tmp_path / "artifacts" / "dataset"]
    workers = prehash.prestat(cache, tmp_path, folders, min_files=1)
    assert len(workers) == 2, "one worker per folder"
    found = workers[0].collect()
    assert set(found.entries) == {os.path.relpath(files[1], tmp_path)}, "only the changed file is read"
    assert found.digests[str(files[3])] is None and len(found.digests) == 20
    hasher = FileHasher(cache, tmp_path)
    hasher.remember()
    for worker in workers[1:]:
        hasher.wait_for(worker)
    names = [str(path) for path in files]
    assert hasher.digests(names) == [FileHasher(None, tmp_path).digest(path) for path in files]
    assert not hasher.pending and children() == before, "taken, and the workers reaped"


@several_cores
def test_a_file_pvbuild_wrote_after_the_workers_looked_is_looked_at_again(tmp_path: Path) -> None:
    files, cache = cached_tree(tmp_path)
    hasher = FileHasher(cache, tmp_path)
    hasher.remember()
    for worker in prehash.prestat(cache, tmp_path, [tmp_path / "artifacts" / "markdown"], min_files=1):
        hasher.wait_for(worker)
    time.sleep(0.5)  # the worker has statted every file by now
    files[1].write_bytes(b"# written by a stage, one file at a time\n")
    hasher.wrote(str(files[1]))
    assert hasher.digest(files[1]) == FileHasher(None, tmp_path).digest(files[1])
    assert hasher.digests([str(files[1])]) == [FileHasher(None, tmp_path).digest(files[1])]


@several_cores
def test_a_folder_written_or_a_forgotten_span_takes_only_the_workers_new_entries(tmp_path: Path) -> None:
    files, cache = cached_tree(tmp_path)
    for spoil in ("writing", "forget"):
        hasher = FileHasher(cache, tmp_path)
        hasher.remember()
        for worker in prehash.prestat(cache, tmp_path, [tmp_path / "artifacts" / "markdown"], min_files=1):
            hasher.wait_for(worker)
        if spoil == "writing":
            hasher.writing((str(tmp_path / "artifacts" / "markdown") + os.sep,))
        else:
            hasher.forget()
            hasher.remember()
        hasher.settle()
        assert not hasher.remembered, f"after {spoil}, nothing the worker saw stands for a stat now"


def test_a_small_stat_cache_starts_no_worker(tmp_path: Path) -> None:
    _, cache = cached_tree(tmp_path)
    assert prehash.prestat(cache, tmp_path, [tmp_path / "artifacts" / "markdown"]) == []
    assert prehash.prestat(tmp_path / "none.marshal", tmp_path, [tmp_path / "artifacts"], min_files=1) == []


@several_cores
def test_a_process_forked_later_leaves_the_worker_to_the_one_that_started_it(tmp_path: Path) -> None:
    _, cache = cached_tree(tmp_path)
    [worker] = prehash.prestat(cache, tmp_path, [tmp_path / "artifacts" / "markdown"], min_files=1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # as a doit -n 2 process: it inherits the worker object, not the worker
        os.close(read_end)
        os.write(write_end, b"none" if worker.worker.result() is None else b"read")
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as stream:
        assert stream.read() == b"none"
    assert len(worker.collect().digests) == 20, "the worker's answer is still whole for the process that started it"
