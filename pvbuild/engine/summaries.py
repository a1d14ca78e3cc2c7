"""Summaries of sharded records, committed beside them (``.state/<stage>/summary.json``): for each shard
file, the SHA-256 of its bytes, how many records it holds, and a digest of every record's key, inputs
and output (``columns_digest``).

On a fresh clone nothing machine-local is left: ``check`` reads and digests every file, and it parsed
every records shard too (50 MB of JSON at 100,000 articles, 0.5 s of a 3.5 s check). A shard whose file
still has the bytes its summary was made from, and whose items now have exactly the keys, inputs and
output digests that the summary digests, is up to date without being parsed (``StageRecords.vouched``);
its keys are read off the file's lines (``shard_keys``) for ``prune``. Anything else (no summary, a shard
edited by hand or by a merge, a journal left by a killed run, one item that changed) is compared record
by record, as without summaries. One line per shard: a merge of two branches that changed different
shards merges the summary too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pvbuild.files import atomic_write_text

SUMMARY = "summary.json"
# A records line starts with its key: ``"<key>": {...}``, one record per line (``records._records_text``),
# and a per-article file's record with its blob id, inputs and output digest (canonical JSON: keys sorted).
_KEY = re.compile(rb'\n"([^"\\\n]*)": \{')
_BLOB = re.compile(rb'\n"[^"\\\n]*": \{"blob":"([0-9a-f]{40})","inputs":\{[^{}]*\},"output":"([0-9a-f]{32})"')


class ShardSummary(NamedTuple):
    """What the summary says of one shard file."""

    file: str  # SHA-256 of the file's bytes: the summary speaks of these bytes only
    records: int  # how many records the file holds
    items: str | None  # columns_digest of its records (None: they cannot be summarised, e.g. an output missing)


@dataclass(frozen=True)
class ItemColumns:
    """A stage's items as columns: each item's key, its inputs by name and its output's digest, in one
    order. What a stage's staleness fingerprint says its items are (``stage.Fingerprint``), and what a
    summary is compared with (``StageRecords.vouched``): no per-item object is made for that."""

    keys: Sequence[str]
    inputs: Mapping[str, Sequence[str | None]]
    outputs: Sequence[str | None]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def columns_digest(keys: Sequence[str], inputs: Mapping[str, Sequence[Any]], outputs: Sequence[Any]) -> str | None:
    """A digest of each item's key, inputs and output, given in the order of the keys; None when they
    cannot be summarised (no inputs, an input or output that is not a string, a value with a line break).

    Column by column (every key, the input names, each input's values, every output), each column one
    value per line: joining strings is far cheaper than encoding 100,000 small dicts as JSON. It is
    exact: the number of items and of names comes first and no value may hold a line break or a NUL, so
    two different lists of items never give the same text."""
    if not keys:
        return sha256(b"0")
    names = sorted(inputs)
    columns = [keys, names, *(inputs[name] for name in names), outputs]
    try:
        texts = ["\n".join(column) for column in columns]
    except TypeError:  # a value that is not a string: None (an input or output not there yet), or no digest
        return None
    if not names or any(text.count("\n") != len(column) - 1 or "\0" in text
                        for text, column in zip(texts, columns, strict=True)):
        return None
    return sha256(f"{len(keys)}\0{len(names)}\0".encode() + "\0".join(texts).encode("utf-8"))


def summarise(data: bytes, records: Mapping[str, Any], keys: Sequence[str]) -> ShardSummary:
    """The summary of a shard file of these bytes, which holds the records of ``keys`` (sorted)."""
    held = [records[key] for key in keys]
    inputs = [record.get("inputs") for record in held]
    names = inputs[0] if inputs and isinstance(inputs[0], dict) else {}
    try:  # every record with the first one's input names, and no more (else: not summarised)
        columns = {name: [entry[name] for entry in inputs] for name in names}
        same = all(len(entry) == len(names) for entry in inputs)
    except (KeyError, TypeError):
        same = False
    digest = columns_digest(keys, columns, [record.get("output") for record in held]) if same else None
    return ShardSummary(sha256(data), len(keys), digest)


def shard_keys(data: bytes) -> list[str]:
    """The keys of a shard file as pvbuild writes it (one record per line), without parsing the records:
    only for bytes that a summary vouches for (pvbuild wrote them)."""
    return [key.decode("utf-8") for key in _KEY.findall(data)]


def shard_blobs(data: bytes) -> dict[str, str]:
    """Blob id -> output digest of each record of a shard file as pvbuild writes it, without parsing it
    (only for bytes that a summary vouches for). A record whose line is not of that form (no blob id, an
    output missing) gives nothing: its file is then read, not trusted from git's index."""
    return {blob.decode(): output.decode() for blob, output in _BLOB.findall(data)}


def read_summary(folder: Path) -> dict[str, ShardSummary]:
    """The summary of the shard files in ``folder``, by file name; empty when there is none or it cannot
    be read (a summary only saves work: without it every shard is parsed)."""
    # Anything malformed (a merge's conflict markers, a line edited by hand): as if there were none.
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        loaded = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
        return {name: ShardSummary(str(value["file"]), int(value["records"]),
                                   None if value["items"] is None else str(value["items"]))
                for name, value in loaded.items()}
    return {}


def write_summary(folder: Path, summary: Mapping[str, ShardSummary]) -> None:
    """Sorted by file name, one shard per line (clean diffs, and merges of different shards)."""
    lines = [f"{json.dumps(name)}: {json.dumps(entry._asdict(), sort_keys=True)}"
             for name, entry in sorted(summary.items())]
    atomic_write_text(folder / SUMMARY, "{\n" + ",\n".join(lines) + "\n}\n")
