"""The dataset's files for one shard of articles: the canonical conversations, each registered format's
files, and the shard's part of the Hugging Face Arrow folder. Pure functions of their inputs: the
same conversations and options give the same bytes.

A format's data files (the first file of each of its channels: ``train.jsonl``, ``chat.jsonl``…)
are written per shard under shard names (``train-00003-of-00032.jsonl``); its other files
(``template.json``) do not depend on the data and are written once. The Arrow folder is what
``datasets.save_to_disk`` writes, one ``.arrow`` file per shard and split, so
``datasets.load_from_disk`` reads the whole dataset; only pyarrow is needed to write it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvbuild.builtins.formats import BUILTIN_FORMATS, jsonl
from pvbuild.engine.records import digest
from pvbuild.engine.shards import shard_name
from pvbuild.engine.url_table import UrlRow
from pvbuild.errors import PvbuildError
from pvbuild.files import atomic_write_bytes
from pvbuild.plugin_types import DatasetFormat, Dialogue, Message

CANONICAL = "conversations.jsonl"
SPLITS = ("train", "validation")
_TEXT = {"dtype": "string", "_type": "Value"}
# The canonical line's columns as ``datasets`` names their types (written into every .arrow file).
FEATURES = {"id": _TEXT, "title": _TEXT, "date": _TEXT, "source": _TEXT, "link": _TEXT,
            "messages": {"feature": {"role": _TEXT, "content": _TEXT}, "_type": "List"}}


@dataclass(frozen=True)
class Conversation:
    """One article's conversation with the URL row it came from."""

    row: UrlRow
    messages: list[Message]

    def pairs(self) -> list[tuple[str, str]]:
        return self.dialogue().pairs()

    def dialogue(self) -> Dialogue:
        """What a dataset format sees of it."""
        return Dialogue(self.row.title, self.messages)


def canonical_lines(conversations: Sequence[Conversation]) -> list[dict[str, Any]]:
    return [{"id": c.row.file_id, "title": c.row.title, "date": c.row.date, "source": c.row.source,
             "link": c.row.link, "messages": [{"role": m.role, "content": m.content} for m in c.messages]}
            for c in conversations]


def split(conversations: list[Conversation], ratio: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Split by article (no article in both), by a seeded hash rank: deterministic and stable. Applied
    to each shard on its own, so an article's split depends only on its shard."""
    if ratio <= 0 or len(conversations) < 2:
        return conversations, []
    count = min(max(1, round(len(conversations) * ratio)), len(conversations) - 1)
    ranked = sorted(conversations, key=lambda c: digest([seed, c.row.file_id]))
    held_out = {c.row.file_id for c in ranked[:count]}
    return ([c for c in conversations if c.row.file_id not in held_out],
            [c for c in conversations if c.row.file_id in held_out])


def data_files(formats: Sequence[DatasetFormat]) -> set[str]:
    """The files that hold data (the first file of every channel of every format)."""
    return {CANONICAL} | {names[0] for dataset_format in formats for names in dataset_format.channels.values()}


def shared_files(formats: Sequence[DatasetFormat], options: Mapping[str, Any]) -> dict[str, str]:
    """What the formats write besides their data files (``template.json``): written once per dataset,
    so it must not depend on the data; taken from each format given no conversations."""
    shared: dict[str, str] = {}
    data = data_files(formats)
    for dataset_format in formats:
        for name, text in dataset_format.write([], [], options).items():
            if name not in data:
                shared[name] = text
    return shared


def arrow_bytes(lines: str) -> bytes:
    """One .arrow file as ``datasets`` writes it (an Arrow IPC stream with the features in its schema),
    from canonical JSON lines: pyarrow's JSON reader, unlike ``pa.array``, does not import pandas
    (a third of a second, more than the shard itself)."""
    import io

    import pyarrow as pa
    import pyarrow.json as pa_json

    text = pa.string()
    schema = pa.schema([(name, text) for name in ("id", "title", "date", "source", "link")]
                       + [("messages", pa.list_(pa.struct([("role", text), ("content", text)])))],
                       metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})})
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    table = pa_json.read_json(io.BytesIO(lines.encode("utf-8")), parse_options=options)
    table = table.combine_chunks().replace_schema_metadata(schema.metadata)  # one batch: the same bytes every time
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def arrow_name(split_name: str, index: int, count: int) -> str:
    return f"arrow/{split_name}/data-{index:05d}-of-{count:05d}.arrow"


def arrow_metadata(files: Mapping[str, str]) -> dict[str, str]:
    """``dataset_dict.json`` and each split's ``state.json`` and ``dataset_info.json`` for the .arrow
    files of ``files`` (every shard's, with their digests), as ``save_to_disk`` writes them. The
    fingerprint, which ``datasets`` keys its caches by, follows the files' contents."""
    texts: dict[str, str] = {}
    splits = [name for name in SPLITS if any(file.startswith(f"arrow/{name}/") for file in files)]
    for name in splits:
        parts = sorted(file.rsplit("/", 1)[1] for file in files
                       if file.startswith(f"arrow/{name}/") and file.endswith(".arrow"))
        fingerprint = digest([[part, files[f"arrow/{name}/{part}"]] for part in parts])[:16]
        state: dict[str, Any] = {
            "_data_files": [{"filename": part} for part in parts], "_fingerprint": fingerprint,
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": None}
        info = {"citation": "", "description": "", "features": FEATURES, "homepage": "", "license": ""}
        texts[f"arrow/{name}/state.json"] = json.dumps(state, indent=2, sort_keys=True) + "\n"
        texts[f"arrow/{name}/dataset_info.json"] = json.dumps(info, indent=2, sort_keys=True) + "\n"
    if splits:
        texts["arrow/dataset_dict.json"] = json.dumps({"splits": splits}) + "\n"
    return texts


@dataclass
class ShardFiles:
    """What one shard contributes: its files (name → bytes) and its counts."""

    files: dict[str, bytes]
    articles: int
    train_articles: int
    validation_articles: int
    pairs: int


def shard_files(conversations: list[Conversation], options: Mapping[str, Any], formats: Sequence[DatasetFormat],
                index: int = 0, count: int = 1) -> ShardFiles:
    """Every data file of shard ``index`` of ``count`` (the formats' shared files are checked against
    what they write without data, when there are several shards)."""
    train, validation = split(conversations, float(options["validation_ratio"]), int(options["seed"]))
    canonical = canonical_lines(conversations)
    texts: dict[str, str] = {CANONICAL: jsonl(canonical)}
    data = data_files(formats)
    shared = shared_files(formats, options) if count > 1 else {}
    for dataset_format in formats:
        written = dataset_format.write([c.dialogue() for c in train], [c.dialogue() for c in validation], options)
        clash = sorted(set(written) & set(texts))
        if clash:
            raise PvbuildError(f"dataset format {dataset_format.name!r} writes {clash}, which another format or the "
                               "canonical conversations write too; its plugin must name its files apart")
        for name, text in written.items():
            if count > 1 and name not in data and shared.get(name) != text:
                raise PvbuildError(f"dataset format {dataset_format.name!r}: {name} depends on the data, so it "
                                   "cannot be written once for a sharded dataset; name it first in a channel")
        texts |= written
    files = {shard_name(name, index, count): text.encode("utf-8") for name, text in texts.items()
             if name in data or count == 1}
    for split_name, members in zip(SPLITS, (train, validation), strict=True):
        if members:
            ids = {c.row.file_id for c in members}
            files[arrow_name(split_name, index, count)] = arrow_bytes(jsonl([line for line in canonical
                                                                              if line["id"] in ids]))
    return ShardFiles(files, len(conversations), len(train), len(validation),
                      sum(len(c.pairs()) for c in conversations))


def write_dataset(directory: Path, conversations: list[Conversation], options: Mapping[str, Any],
                  formats: Sequence[DatasetFormat] = BUILTIN_FORMATS) -> dict[str, Any]:
    """Every file of an unsharded dataset of ``conversations`` into ``directory``; the manifest (without
    writing it). The dataset stage does the same shard by shard."""
    built = shard_files(conversations, options, formats)
    digests = {name: digest(data) for name, data in built.files.items()}
    files = built.files | {name: text.encode("utf-8") for name, text in arrow_metadata(digests).items()}
    for name, data in files.items():
        atomic_write_bytes(directory / name, data)
    counts = {name: getattr(built, name) for name in COUNTS}
    return manifest_of(options, formats, counts, {name: digest(data) for name, data in files.items()})


COUNTS = ("articles", "train_articles", "validation_articles", "pairs")


def manifest_of(options: Mapping[str, Any], formats: Sequence[DatasetFormat], counts: Mapping[str, int],
                files: Mapping[str, str]) -> dict[str, Any]:
    """The manifest: the format, its training file, the counts (``COUNTS``) and every file's digest."""
    chosen = next((f for f in formats if f.name == options["format"]), None)
    return {"format": options["format"], "train_file": chosen.channels["training"][0] if chosen else "",
            **counts, "files": dict(sorted(files.items()))}
