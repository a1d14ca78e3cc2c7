"""The ``dataset`` stage: conversations → conversations.jsonl, instruction train.jsonl + template.json,
chat ``{"dialog": [...]}`` lines, an optional validation split and a Hugging Face Arrow folder.

Built in a temporary directory and swapped in whole, so a failure leaves the previous dataset.
Same inputs give byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvbuild.builtins.formats import BUILTIN_FORMATS, jsonl
from pvbuild.engine import staleness
from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item, digest, strings_digest
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.url_table import UrlRow
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.files import DIRECTORY_MODE, TEMP_SUFFIX, replace_directory
from pvbuild.plugin_types import AnnotationError, DatasetFormat, Dialogue, Message
from pvbuild.stages.conversations import read_conversation


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
    """Split by article (no article in both), by a seeded hash rank: deterministic and stable."""
    if ratio <= 0 or len(conversations) < 2:
        return conversations, []
    count = min(max(1, round(len(conversations) * ratio)), len(conversations) - 1)
    ranked = sorted(conversations, key=lambda c: digest([seed, c.row.file_id]))
    held_out = {c.row.file_id for c in ranked[:count]}
    return ([c for c in conversations if c.row.file_id not in held_out],
            [c for c in conversations if c.row.file_id in held_out])


def _save_arrow(directory: Path, splits: Mapping[str, list[Conversation]], fingerprint: str) -> None:
    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()
    parts = {name: datasets.Dataset(pa.Table.from_pylist(canonical_lines(items)),
                                    fingerprint=digest([fingerprint, name]))
             for name, items in splits.items() if items}
    datasets.DatasetDict(parts).save_to_disk(str(directory))


def write_dataset(directory: Path, conversations: list[Conversation], options: Mapping[str, Any],
                  formats: Sequence[DatasetFormat] = BUILTIN_FORMATS) -> dict[str, Any]:
    """Write every dataset file into ``directory``: the canonical conversations and each format's
    files (``dataset.format`` chooses which of them train); return the manifest."""
    train, validation = split(conversations, float(options["validation_ratio"]), int(options["seed"]))
    files: dict[str, str] = {"conversations.jsonl": jsonl(canonical_lines(conversations))}
    for dataset_format in formats:
        written = dataset_format.write([c.dialogue() for c in train], [c.dialogue() for c in validation], options)
        clash = sorted(set(written) & set(files))
        if clash:
            raise PvbuildError(f"dataset format {dataset_format.name!r} writes {clash}, which another format or the "
                               "canonical conversations write too; its plugin must name its files apart")
        files |= written
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    _save_arrow(directory / "arrow", {"train": train, "validation": validation}, digest(files))
    digests = {str(path.relative_to(directory)): digest(path.read_bytes())
               for path in sorted(directory.rglob("*")) if path.is_file()}
    chosen = next((f for f in formats if f.name == options["format"]), None)
    return {"format": options["format"], "train_file": chosen.channels["training"][0] if chosen else "",
            "articles": len(conversations), "train_articles": len(train),
            "validation_articles": len(validation), "pairs": sum(len(c.pairs()) for c in conversations),
            "files": digests}


def dataset_members(workspace: Workspace) -> list[tuple[UrlRow, str]]:
    """The articles that have a conversation, with the conversation's digest."""
    members = []
    for row in workspace.rows():
        conversation = workspace.hasher.digest(workspace.conversation_file(row.file_id))
        if conversation is not None:
            members.append((row, conversation))
    return members


class DatasetStage(StageBase):
    name = "dataset"
    doc = "build train.jsonl, template.json, chat.jsonl and the Arrow dataset"
    derived_inputs = frozenset({"conversations"})

    def items(self, workspace: Workspace) -> list[Item]:
        members = [[row.file_id, row.title, row.date, row.source, conversation]
                   for row, conversation in dataset_members(workspace)]
        options = workspace.identity(dict(workspace.config.dataset))
        return [Item("dataset", {"conversations": strings_digest(members), "options": options},
                     str(workspace.manifest))]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """The manifest lists every dataset file's digest; an edited or missing file is rebuilt (the
        same bytes come back, so nothing after the dataset changes)."""
        if found:
            return found
        manifest = json.loads(workspace.manifest.read_text(encoding="utf-8"))
        for name, expected in manifest.get("files", {}).items():
            if workspace.hasher.digest(workspace.dataset_dir / name) != expected:
                return [StaleItem(items[0], f"dataset file {name} missing or edited since it was built", False)]
        return []

    def run(self, workspace: Workspace) -> StageResult:
        return run_dataset_stage(workspace, staleness.stale(workspace, self))


def run_dataset_stage(workspace: Workspace, stale: list[StaleItem]) -> StageResult:
    """Rebuild the whole dataset when any conversation or dataset option changed."""
    result = StageResult("dataset")
    if not stale:
        result.skipped = 1
        return result
    conversations = []
    for row, _ in dataset_members(workspace):
        path = workspace.conversation_file(row.file_id)
        try:
            with open(path, encoding="utf-8") as stream:
                messages = read_conversation(stream.read(), path)
        except AnnotationError as error:
            raise PvbuildError(f"{error}; fix the file or delete it to annotate the article again") from error
        conversations.append(Conversation(row, messages))
    if not conversations:
        raise PvbuildError("no conversations to build a dataset from: every article failed or none was crawled")
    workspace.dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".dataset-", suffix=TEMP_SUFFIX, dir=workspace.dataset_dir.parent))
    building.chmod(DIRECTORY_MODE)  # mkdtemp makes it 0700; the dataset is an ordinary folder
    try:
        formats = [entry.item for entry in workspace.config.registry.dataset_formats.values()]
        manifest = write_dataset(building, conversations, workspace.config.dataset, formats)
        text = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
        (building / "manifest.json").write_text(text, encoding="utf-8")
        replace_directory(building, workspace.dataset_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    item = stale[0].item
    records = workspace.records("dataset")
    records.put(item.key, {"inputs": dict(item.inputs), "output": digest(text.encode("utf-8")),
                           "articles": manifest["articles"], "pairs": manifest["pairs"]})
    workspace.finish("dataset")
    result.built = 1
    return result


STAGE = DatasetStage()
