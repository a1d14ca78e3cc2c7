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
    assert isinstance(hasher.pending, prehash.Prehash) and len(hasher.pending.workers) >= 2
    assert hasher.digests([str(path) for path in files]) == [FileHasher(None, tmp_path).digest(path) for path in files]
    assert hasher.pending is None and len(hasher.entries) == len(files), "one entry per file, from the workers"
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
    hasher.pending = started
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
    entries = started.collect()
    assert set(entries) == {os.path.relpath(path, tmp_path) for path in files[1:]}, "each listed file once"
    assert [entries[os.path.relpath(path, tmp_path)][2] for path in files[1:]] == \
        [FileHasher(None, tmp_path).digest(path) for path in files[1:]]
