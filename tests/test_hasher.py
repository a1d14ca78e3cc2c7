"""FileHasher: digests of file bytes, a machine-local (mtime, size) cache, and its failure modes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pvbuild.engine.hasher import FileHasher
from pvbuild.engine.records import check_bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def test_digest_is_of_the_bytes_and_none_when_missing(tmp_path: Path) -> None:
    hasher = FileHasher(None, tmp_path)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))  # several reads' worth
    assert hasher.digest(big) == sha(big.read_bytes())
    assert hasher.digest(str(tmp_path / "small.md")) is None
    (tmp_path / "small.md").write_bytes(b"# x\n")
    assert hasher.digest(str(tmp_path / "small.md")) == sha(b"# x\n")


def test_cache_is_trusted_only_while_mtime_and_size_hold(tmp_path: Path) -> None:
    cache, page = tmp_path / ".pvbuild" / "stat-cache.marshal", tmp_path / "page.md"
    page.write_bytes(b"one")
    first = FileHasher(cache, tmp_path)
    assert first.digest(page) == sha(b"one")
    first.save()
    stamp = page.stat().st_mtime_ns
    page.write_bytes(b"two")  # same size: with the old mtime put back, only the cache can tell
    os.utime(page, ns=(stamp, stamp))
    assert FileHasher(cache, tmp_path).digest(page) == sha(b"one"), "an unchanged stat is trusted (make semantics)"
    page.write_bytes(b"three")
    assert FileHasher(cache, tmp_path).digest(page) == sha(b"three")


def test_a_corrupt_or_foreign_cache_is_ignored(tmp_path: Path) -> None:
    cache, page = tmp_path / "stat-cache.marshal", tmp_path / "page.md"
    page.write_bytes(b"text")
    for junk in (b"", b"\x00garbage", b'{"page.md": [1, 4, "x"]}', b"\xe9"):
        cache.write_bytes(junk)
        assert FileHasher(cache, tmp_path).digest(page) == sha(b"text")


def test_a_read_only_run_looks_at_each_file_once(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_bytes(b"before")
    hasher = FileHasher(None, tmp_path)
    hasher.remembered = {}
    assert hasher.digest(page) == sha(b"before")
    page.write_bytes(b"after!")
    assert hasher.digest(page) == sha(b"before")
    hasher.remembered = None
    assert hasher.digest(page) == sha(b"after!")


def test_a_check_digest_is_cached_like_a_digest_and_is_not_one(tmp_path: Path) -> None:
    """``check_digest`` (xxh3, for the dataset's files) is kept in the stat cache under its own key,
    trusted while mtime and size hold; ``known`` answers only what costs no reading."""
    cache, shard = tmp_path / ".pvbuild" / "stat-cache.marshal", tmp_path / "train-00000-of-00002.jsonl"
    shard.write_bytes(b"x" * 1000)
    first = FileHasher(cache, tmp_path)
    assert first.check_digest(shard) == check_bytes(b"x" * 1000)
    assert first.known(shard) is None, "a check digest says nothing of the SHA-256 digest"
    first.save()
    shard.write_bytes(b"y" * 1000)  # the same size
    os.utime(shard, ns=(1, 1))  # and another mtime: looked at again
    again = FileHasher(cache, tmp_path)
    assert again.check_digest(shard) == check_bytes(b"y" * 1000) != check_bytes(b"x" * 1000)
    assert again.check_digest(tmp_path / "gone.jsonl") is None
    assert again.digest(shard) == sha(b"y" * 1000) and again.known(shard) == sha(b"y" * 1000)
