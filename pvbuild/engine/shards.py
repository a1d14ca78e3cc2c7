"""Shards: a stable assignment of articles to a bounded number of groups, so that the dataset and the
per-article records are rebuilt, rewritten and uploaded a group at a time, not whole.

An article's shard depends only on its ``file_id`` and the shard count; the count is a power of
two chosen from the number of articles, so when it doubles each shard splits in two and no
article moves anywhere else. With one shard the files keep their plain names (``train.jsonl``).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import PurePosixPath

ARTICLES_PER_SHARD = 2048  # the default: 100,000 articles give 64 shards of ~1,560 articles


def shard_count(articles: int, per_shard: int = ARTICLES_PER_SHARD) -> int:
    """The smallest power of two whose shards hold at most ``per_shard`` articles on average."""
    count = 1
    while count * per_shard < articles:
        count *= 2
    return count


def shard_of(key: str, count: int) -> int:
    """The shard of ``key`` among ``count`` (a power of two). CRC-32: stable across machines and
    Python versions, and ten times cheaper than a cryptographic digest at 100,000 keys."""
    return shard_indices([key], count)[0]


def shard_indices(keys: Sequence[str], count: int) -> list[int]:
    """``shard_of`` of each key, without a call per key (100,000 keys at every change)."""
    mask, crc32 = count - 1, zlib.crc32
    return [crc32(key.encode("utf-8")) & mask for key in keys]


def shard_name(name: str, index: int, count: int) -> str:
    """``train.jsonl`` as shard ``index`` of ``count``: ``train-00003-of-00032.jsonl`` (Hugging Face's
    naming, which ``datasets`` reads as one split); the plain name when there is one shard."""
    if count == 1:
        return name
    path = PurePosixPath(name)
    return str(path.with_name(f"{path.stem}-{index:05d}-of-{count:05d}{path.suffix}"))
