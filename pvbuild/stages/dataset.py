"""The ``dataset`` stage: conversations → conversations.jsonl, instruction train.jsonl + template.json,
chat ``{"dialog": [...]}`` lines, an optional validation split and a Hugging Face Arrow folder.

Articles are grouped into shards (``pvbuild.engine.shards``); each shard's files are rebuilt only
when one of its articles (or a dataset option) changed, so one edited article at 100,000 rewrites
one shard's files and the manifest. The manifest (``dataset/manifest.json``) lists every file with
its digest and, for several shards, what each shard was built from; it is written last, and a file
that does not match it is rebuilt on the next run. Same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, ClassVar

from pvbuild.engine import staleness
from pvbuild.engine.outcomes import StageResult, common_reason, load_failures
from pvbuild.engine.records import Item, check_bytes, digest, digest_bytes, file_output
from pvbuild.engine.shards import shard_count, shard_indices, shard_name
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.url_table import UrlRow
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.files import atomic_write_bytes, atomic_write_text
from pvbuild.plugin_types import AnnotationError, DatasetFormat
from pvbuild.progress import Progress
from pvbuild.stages.conversations import read_conversation
from pvbuild.stages.dataset_files import (
    COUNTS,
    Conversation,
    ShardFiles,
    arrow_metadata,
    manifest_of,
    shard_files,
    shared_files,
)
from pvbuild.stages.mixing import MIX_OPTIONS, general_name, load_general, mix_identity, mix_path, mixed_files

Member = tuple[UrlRow, str]  # an article with a conversation, and the conversation's digest
# Options that decide how the files are cut, not what they hold: the shard count stands for them.
LAYOUT_OPTIONS = frozenset({"articles_per_shard"})
# Options about whether the model half may go on, not about what the dataset holds.
POLICY_OPTIONS = frozenset({"max_failed"})


def dataset_members(workspace: Workspace) -> list[Member]:
    """The articles that have a conversation, with the conversation's digest (the check's list, in the
    action that follows it)."""
    members: list[Member] = workspace.memo("dataset", "members", lambda: _members(workspace))
    return members


def _members(workspace: Workspace) -> list[Member]:
    rows = workspace.rows()
    conversations = workspace.hasher.digests([workspace.conversation_file(row.file_id) for row in rows])
    return [(row, conversation) for row, conversation in zip(rows, conversations, strict=True)
            if conversation is not None]


def options_identity(workspace: Workspace) -> str:
    return workspace.identity({k: v for k, v in workspace.config.dataset.items()
                               if k not in LAYOUT_OPTIONS | POLICY_OPTIONS | MIX_OPTIONS})


@dataclass(frozen=True)
class Shard:
    """The articles of one shard, in URL-table order, and a digest of what they hold."""

    members: list[Member]
    contents: str  # each article's file_id, row digest and conversation digest, digested together


def dataset_shards(workspace: Workspace) -> list[Shard]:
    """The members grouped by shard (the check's grouping, in the action that follows it)."""
    shards: list[Shard] = workspace.memo("dataset", "shards", lambda: _shards(workspace))
    return shards


def _shards(workspace: Workspace) -> list[Shard]:
    members = dataset_members(workspace)
    count = shard_count(len(members), int(workspace.config.dataset["articles_per_shard"]))
    groups: list[list[Member]] = [[] for _ in range(count)]
    for member, index in zip(members, shard_indices([row.file_id for row, _ in members], count), strict=True):
        groups[index].append(member)
    rows = workspace.row_digests
    # The rows' digests are already known (the URL table's cache): joining them is ten times cheaper
    # than encoding every row's fields again, which one edited article at 100,000 paid for twice.
    return [Shard(group, digest_bytes("\n".join([f"{encode_basestring(row.file_id)} {rows[row.file_id]} {conversation}"
                                                 for row, conversation in group]).encode("utf-8")))
            for group in groups]


def shard_inputs(shard: Shard, options: str, count: int) -> str:
    """What one shard's files are built from: its articles' rows and conversations, and the options."""
    return digest([options, count, shard.contents])


def format_data_names(manifest: Mapping[str, Any], name: str) -> list[str]:
    """The files that hold data file ``name`` (``train.jsonl``) in the dataset: itself, or its shards."""
    count = int(manifest.get("shard_count", 1))
    parts = [shard_name(name, index, count) for index in range(count)] + [general_name(name)]  # and the mix
    return [part for part in parts if part in manifest["files"]]


class DatasetStage(StageBase):
    name = "dataset"
    writes: ClassVar[tuple[str, ...] | None] = ("dataset/",)
    doc = "build train.jsonl, template.json, chat.jsonl and the Arrow dataset, shard by shard"
    derived_inputs = frozenset({"conversations"})

    def items(self, workspace: Workspace) -> list[Item]:
        members = dataset_members(workspace)
        count = shard_count(len(members), int(workspace.config.dataset["articles_per_shard"]))
        if count > 1:
            inputs = {"conversations": digest([shard.contents for shard in dataset_shards(workspace)]),
                      "options": options_identity(workspace), "shards": str(count)}
        else:  # one shard: the records of pvbuild 0.1 still match
            # digest, not strings_digest: the same value, and the C encoder is faster on many members.
            inputs = {"conversations": digest([[row.file_id, row.title, row.date, row.source, conversation]
                                               for row, conversation in members]),
                      "options": options_identity(workspace)}
        mix = mix_identity(workspace.config.project_dir, workspace.config.dataset, workspace.hasher.digest)
        if mix is not None:
            inputs["mix"] = digest(mix)
        return [Item("dataset", inputs, str(workspace.manifest))]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """The manifest lists every dataset file's digest; an edited or missing file is rebuilt (the
        same bytes come back, so nothing after the dataset changes)."""
        if found:
            return found
        manifest = json.loads(workspace.manifest.read_text(encoding="utf-8"))
        recorded = _recorded_files(workspace)
        name = next((name for name, expected in manifest.get("files", {}).items()
                     if not _matches(workspace, name, expected, recorded)), None)
        return [] if name is None else [StaleItem(items[0], f"dataset file {name} missing or edited since it was "
                                                  "built", False)]

    def run(self, workspace: Workspace) -> StageResult:
        return run_dataset_stage(workspace, staleness.stale(workspace, self))

    def self_checked(self, workspace: Workspace) -> bool:
        """Whether its record keeps a check digest of every file (``check_bytes``): a check then reads
        them itself, and its digesting workers leave the dataset's folder out."""
        files = _recorded_files(workspace)
        return bool(files) and all(isinstance(entry, dict) and entry.get("check") for entry in files.values())


def _recorded_files(workspace: Workspace) -> dict[str, Any]:
    """What the dataset's record says of each of its files: digest, git blob id and check digest."""
    files = (workspace.records("dataset").get("dataset") or {}).get("files")
    return files if isinstance(files, dict) else {}


def _matches(workspace: Workspace, name: str, expected: str, recorded: Mapping[str, Any]) -> bool:
    """Whether dataset file ``name`` holds what the manifest says it does (SHA-256 ``expected``): by its
    digest where that costs no reading, else by the check digest its record keeps (``check_bytes``),
    else by reading its digest (records older than check digests)."""
    path = workspace.dataset_dir / name
    entry = recorded.get(name)
    check = entry.get("check") if isinstance(entry, dict) and entry.get("output") == expected else None
    if check is None:
        return workspace.hasher.digest(path) == expected
    known = workspace.hasher.known(path)
    return known == expected if known is not None else workspace.hasher.check_digest(path) == check


def _read_conversations(workspace: Workspace, members: list[Member]) -> list[Conversation]:
    conversations = []
    for row, _ in members:
        path = workspace.conversation_file(row.file_id)
        try:
            with open(path, encoding="utf-8") as stream:
                messages = read_conversation(stream.read(), path)
        except AnnotationError as error:
            raise PvbuildError(f"{error}; fix the file or delete it to annotate the article again") from error
        conversations.append(Conversation(row, messages))
    return conversations


def _file_record(workspace: Workspace, name: str, recorded: Any, expected: str) -> dict[str, str]:
    """A dataset file kept from an earlier build: its digest, git blob id and check digest, as recorded
    when it was built, or read once from the file (records older than blob ids or check digests)."""
    if isinstance(recorded, dict) and recorded.get("output") == expected and recorded.get("blob"):
        check = recorded.get("check") or check_bytes((workspace.dataset_dir / name).read_bytes())
        return {"output": expected, "blob": str(recorded["blob"]), "check": str(check)}
    return _built_record((workspace.dataset_dir / name).read_bytes())


def _built_record(data: bytes) -> dict[str, str]:
    """What the dataset's record says of a file it built: digest, git blob id, check digest."""
    return {**file_output(data), "check": check_bytes(data)}


def _intact(workspace: Workspace, files: Mapping[str, str], recorded: Mapping[str, Any]) -> bool:
    return all(_matches(workspace, name, expected, recorded) for name, expected in files.items())


def _write(directory: Path, files: Mapping[str, bytes]) -> dict[str, str]:
    for name, data in files.items():
        atomic_write_bytes(directory / name, data)
    return {name: digest(data) for name, data in files.items()}


def _remove_unlisted(directory: Path, listed: set[str]) -> None:
    """Files of an earlier layout (another shard count, a split that is gone) and empty folders."""
    for folder, subfolders, names in os.walk(directory, topdown=False):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.relpath(path, directory) not in listed:
                os.unlink(path)
        for name in subfolders:
            path = os.path.join(folder, name)
            if not os.listdir(path):
                os.rmdir(path)


def _shard_entry(built: ShardFiles, inputs: str, files: dict[str, str]) -> dict[str, Any]:
    return {"inputs": inputs, **{name: getattr(built, name) for name in COUNTS}, "files": files}


def no_conversations(workspace: Workspace) -> str:
    """Why there is nothing to build from: the conversations' failures of the last run, if any."""
    failed = load_failures(workspace.config.cache_dir, "conversations")
    if not failed:
        return "no conversations to build a dataset from: no article was crawled and annotated"
    return (f"no conversations to build a dataset from: all {len(failed)} article(s) failed to annotate, "
            f"mostly: {common_reason(failed)} (the conversations step lists them; fix that and run again)")


def run_dataset_stage(workspace: Workspace, stale: list[StaleItem]) -> StageResult:
    """Rebuild the shards whose articles or options changed (all of them when doit -a forces it), then
    the files every shard shares, then the manifest."""
    result = StageResult("dataset")
    if not stale:
        result.skipped = 1
        return result
    members = dataset_members(workspace)
    if not members:
        raise PvbuildError(no_conversations(workspace))
    options = workspace.config.dataset
    formats: list[DatasetFormat] = [entry.item for entry in workspace.config.registry.dataset_formats.values()]
    shards = dataset_shards(workspace)
    count, identity = len(shards), options_identity(workspace)
    previous = (workspace.read_artifact(workspace.manifest) or {}).get("shards", {}) if not workspace.forced else {}
    directory = workspace.dataset_dir
    directory.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, Any]] = {}
    recorded = _recorded_files(workspace) if not workspace.forced else {}
    written: dict[str, dict[str, str]] = {}  # each file built now: its digest, git blob id, check digest
    progress = Progress("dataset shards", count) if count > 1 else None
    for index, shard in enumerate(shards):
        key, inputs, group = f"{index:05d}", shard_inputs(shard, identity, count), shard.members
        old = previous.get(key)
        if old is not None and old.get("inputs") == inputs and _intact(workspace, old["files"], recorded):
            entries[key] = old
            result.skipped += 1
        elif group:
            built = shard_files(_read_conversations(workspace, group), options, formats, index, count)
            entries[key] = _shard_entry(built, inputs, _write(directory, built.files))
            written |= {name: _built_record(data) for name, data in built.files.items()}
            result.built += 1
        if progress is not None:
            progress.advance(True)
    if progress is not None:
        progress.close()
    manifest = _manifest(workspace, entries, formats, count)
    text = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    atomic_write_text(workspace.manifest, text)
    _remove_unlisted(directory, set(manifest["files"]) | {"manifest.json"})
    item = stale[0].item
    files = {name: written.get(name) or _file_record(workspace, name, recorded.get(name), file_digest)
             for name, file_digest in sorted(manifest["files"].items())}
    workspace.records("dataset").put(item.key, {"inputs": dict(item.inputs), "output": digest(text.encode("utf-8")),
                                                "articles": manifest["articles"], "pairs": manifest["pairs"],
                                                "files": files})
    workspace.finish("dataset")
    return result


def _manifest(workspace: Workspace, entries: Mapping[str, dict[str, Any]], formats: list[DatasetFormat],
              count: int) -> dict[str, Any]:
    """The files every shard shares (written here), and the manifest of them all."""
    options = workspace.config.dataset
    files = {name: file_digest for entry in entries.values() for name, file_digest in entry["files"].items()}
    texts = (shared_files(formats, options) if count > 1 else {}) | arrow_metadata(files)
    shared = {name: text.encode("utf-8") for name, text in texts.items()}
    _write(workspace.dataset_dir, {name: data for name, data in shared.items()
                                   if workspace.hasher.digest(workspace.dataset_dir / name) != digest(data)})
    files |= {name: digest(data) for name, data in shared.items()}
    counts = {name: sum(int(entry[name]) for entry in entries.values()) for name in COUNTS}
    mix = _mix(workspace, formats, files, count)
    manifest = manifest_of(options, formats, counts, files)
    if mix:
        manifest["mix"] = mix
    if count > 1:
        manifest |= {"shard_count": count, "shards": {key: entries[key] for key in sorted(entries)}}
    return manifest


def _mix(workspace: Workspace, formats: list[DatasetFormat], files: dict[str, str], count: int) -> dict[str, Any]:
    """The general files (``dataset.mix_file``), written where they changed and added to ``files``; what the
    manifest says of them ({} without a mix)."""
    options = workspace.config.dataset
    if not options["mix_file"]:
        return {}
    rows = load_general(mix_path(workspace.config.project_dir, str(options["mix_file"])), workspace.config.config_file)
    domain = {}
    for dataset_format in formats:
        data_file = dataset_format.channels["training"][0]
        names = [shard_name(data_file, index, count) for index in range(count)]
        domain[dataset_format.name] = sum((workspace.dataset_dir / name).read_bytes().count(b"\n")
                                          for name in names if name in files)
    general, lines = mixed_files(rows, float(options["mix_ratio"]), int(options["seed"]), formats, domain, options)
    _write(workspace.dataset_dir, {name: data for name, data in general.items()
                                   if workspace.hasher.digest(workspace.dataset_dir / name) != digest(data)})
    files |= {name: digest(data) for name, data in general.items()}
    return {"file": str(options["mix_file"]), "ratio": float(options["mix_ratio"]), "available": len(rows),
            "domain_lines": domain, "general_lines": lines}


STAGE = DatasetStage()
