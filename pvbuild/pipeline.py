"""The artifact tree of one profile: where each artifact lives, what it is built from, what is stale.

Each stage is a list of items (see ``records.Item``) whose input digests are computed here.
The doit tasks, the stage runners and ``pvbuild check`` all ask this module, so there is one
definition of staleness.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvbuild.config import RUNTIME_CRAWL_OPTIONS, Config, SourceConfig
from pvbuild.records import EDITED, FileHasher, Item, StageRecords, digest, stale_items
from pvbuild.urls import UrlRow, read_urls

STAGES = ("urls", "markdown", "conversations", "dataset")
# Like make, a hand-edited intermediate is kept and its dependents rebuild from it; the
# dataset is wholly derived, so an edited dataset file is rebuilt.
KEEPS_EDITS = frozenset({"urls", "markdown", "conversations"})


@dataclass(frozen=True)
class StaleItem:
    """An item to rebuild and the reason."""

    item: Item
    reason: str


class Pipeline:
    """Paths, item lists and staleness for one validated profile."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.urls_csv = config.artifacts / "urls.csv"
        self.markdown_dir = config.artifacts / "markdown"
        self.conversation_dir = config.artifacts / "conversations"
        self.dataset_dir = config.artifacts / "dataset"
        self.manifest = self.dataset_dir / "manifest.json"
        self.hasher = FileHasher(config.cache_dir / "stat-cache.json", config.project_dir)
        self._records: dict[str, StageRecords] = {}
        self._rows: list[UrlRow] | None = None

    # -- inputs -----------------------------------------------------------------------------
    def records(self, stage: str) -> StageRecords:
        if stage not in self._records:
            self._records[stage] = StageRecords(self.config.state_dir, stage)
        return self._records[stage]

    def rows(self) -> list[UrlRow]:
        """URL rows of the configured sources (rows of sources no longer configured are kept
        in the table but not built)."""
        if self._rows is None:
            configured = {source.name for source in self.config.sources}
            self._rows = [row for row in read_urls(self.urls_csv) if row.source in configured]
        return self._rows

    def forget_rows(self) -> None:
        self._rows = None

    def finish(self, stage: str) -> None:
        """Fold the stage's journal into its records file and save the stat cache."""
        self.records(stage).commit()
        self.hasher.save()

    @contextlib.contextmanager
    def finishing(self, stage: str) -> Iterator[None]:
        """Run a stage body and finish the stage even when it fails or is interrupted."""
        try:
            yield
        finally:
            self.finish(stage)

    def source(self, name: str) -> SourceConfig:
        return next(source for source in self.config.sources if source.name == name)

    def list_identity(self) -> str:
        """What decides the URL table: each source's plugin, version and output-affecting options."""
        return digest([self._plugin_identity("crawlers", s.plugin) | {"name": s.name, "options": {
            k: v for k, v in s.options.items() if k not in RUNTIME_CRAWL_OPTIONS}} for s in self.config.sources])

    def crawler_identity(self, source: SourceConfig) -> str:
        """What decides an article's markdown: the plugin, its version, selector and strategy."""
        site = self.config.registry.crawlers[source.plugin].item
        return digest(self._plugin_identity("crawlers", source.plugin) | {
            "article_selector": site.article_selector, "strategy": source.options["strategy"]})

    def annotator_identity(self) -> str:
        """What decides a conversation: the annotator plugin, version and output-affecting options."""
        annotator = self.config.registry.annotators[self.config.annotator.plugin].item
        return digest(self._plugin_identity("annotators", self.config.annotator.plugin)
                      | {"options": annotator.identity(self.config.annotator.options)})

    def _plugin_identity(self, kind: str, name: str) -> dict[str, Any]:
        registered = self.config.registry.table(kind)[name]
        return {"name": name, **registered.identity}

    # -- paths ------------------------------------------------------------------------------
    def markdown_path(self, file_id: str) -> Path:
        return self.markdown_dir / f"{file_id}.md"

    def conversation_path(self, file_id: str) -> Path:
        return self.conversation_dir / f"{file_id}.csv"

    # -- items ------------------------------------------------------------------------------
    def url_items(self) -> list[Item]:
        return [Item("urls", {"sources": self.list_identity()}, self.urls_csv)]

    def markdown_items(self) -> list[Item]:
        crawlers = {source.name: self.crawler_identity(source) for source in self.config.sources}
        return [Item(row.file_id, {"row": digest([row.title, row.link, row.date, row.source]),
                                   "crawler": crawlers[row.source]}, self.markdown_path(row.file_id))
                for row in self.rows()]

    def conversation_items(self) -> list[Item]:
        """One item per article whose markdown exists (an uncrawled article has nothing to annotate)."""
        annotator = self.annotator_identity()
        items = []
        for row in self.rows():
            markdown = self.hasher.digest(self.markdown_path(row.file_id))
            if markdown is not None:
                items.append(Item(row.file_id, {"markdown": markdown, "annotator": annotator},
                                  self.conversation_path(row.file_id)))
        return items

    def dataset_members(self) -> list[tuple[UrlRow, str]]:
        """The articles that have a conversation, with the conversation's digest."""
        members = []
        for row in self.rows():
            conversation = self.hasher.digest(self.conversation_path(row.file_id))
            if conversation is not None:
                members.append((row, conversation))
        return members

    def dataset_items(self) -> list[Item]:
        members = [[row.file_id, row.title, row.date, row.source, conversation]
                   for row, conversation in self.dataset_members()]
        return [Item("dataset", {"conversations": digest(members), "options": digest(self.config.dataset)},
                     self.manifest)]

    def items(self, stage: str) -> list[Item]:
        return {"urls": self.url_items, "markdown": self.markdown_items,
                "conversations": self.conversation_items, "dataset": self.dataset_items}[stage]()

    @property
    def last_list_crawl_file(self) -> Path:
        """When the lists were last crawled: machine-local, so committed state has no timestamps."""
        return self.config.cache_dir / "last-list-crawl"

    def _lists_due(self) -> list[StaleItem]:
        hours = [float(s.options["refresh_hours"]) for s in self.config.sources if s.options["refresh_hours"]]
        if not hours:
            return []
        try:
            age = time.time() - float(self.last_list_crawl_file.read_text())
        except (OSError, ValueError):
            age = float("inf")
        if age < min(hours) * 3600:
            return []
        return [StaleItem(self.url_items()[0], f"lists last crawled {age / 3600:.1f} h ago (refresh_hours)")]

    def stale(self, stage: str) -> list[StaleItem]:
        records = self.records(stage)
        found = [StaleItem(item, reason) for item, reason in stale_items(self.items(stage), records, self.hasher)
                 if not (reason == EDITED and stage in KEEPS_EDITS)]
        if stage == "dataset" and not found:
            found = self._dataset_files_edited(self.items("dataset")[0])
        if stage == "urls" and not found:
            found = self._lists_due()
        self.hasher.save()
        return found

    def _dataset_files_edited(self, item: Item) -> list[StaleItem]:
        """The manifest lists every dataset file's digest; an edited or missing file is stale."""
        manifest = json.loads(self.manifest.read_text(encoding="utf-8"))
        for name, expected in manifest.get("files", {}).items():
            if self.hasher.digest(self.dataset_dir / name) != expected:
                return [StaleItem(item, f"dataset file {name} missing or edited since it was built")]
        return []
