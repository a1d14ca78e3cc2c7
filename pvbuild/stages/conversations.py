"""The ``conversations`` stage: annotate each new or changed article into ``conversations/<file_id>.csv``
(columns ``role,content``, alternating user/assistant), written only when it is valid.

A conversation is built from its markdown, the annotator (plugin, version, output-affecting
options) and its URL row (the annotator sees the title, date and link). A failed article writes
nothing (so it is retried next run) and the others go on; a fatal error (no credentials, no quota)
stops the stage and marks the rest as not attempted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any, ClassVar

from pvbuild.config import ANNOTATOR_RUNTIME_OPTIONS
from pvbuild.engine import staleness
from pvbuild.engine.outcomes import NOT_ATTEMPTED, Failure, StageResult
from pvbuild.engine.records import Item, file_output, stale_reason
from pvbuild.engine.stage import ArticleStage, Fingerprint, StaleItem
from pvbuild.engine.summaries import ItemColumns
from pvbuild.engine.url_table import UrlRow
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.plugin_types import (
    Annotation,
    AnnotationError,
    AnnotatorRun,
    Article,
    BatchJournal,
    FatalAnnotationError,
    Message,
    drop_repeated_questions,
    validate_conversation,
)
from pvbuild.progress import Progress


def format_conversation(messages: Iterable[Message]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["role", "content"])
    for message in messages:
        writer.writerow([message.role, message.content.strip()])
    return buffer.getvalue()


def read_conversation(text: str, where: str) -> list[Message]:
    """Parse a conversation CSV, naming the file and row of anything malformed."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != ["role", "content"]:
        raise AnnotationError(f"{where}: the header must be 'role,content'")
    messages = [Message(row["role"], row["content"]) for row in reader]
    try:
        return validate_conversation(messages)
    except AnnotationError as error:
        raise AnnotationError(f"{where}: {error}") from error


class _Annotating:
    """One run of the stage: checks and writes each article's annotation as it comes, live or batched."""

    def __init__(self, workspace: Workspace, stale: list[StaleItem], result: StageResult) -> None:
        self.workspace, self.result = workspace, result
        self.rows = {row.file_id: row for row in workspace.rows()}
        self.entries = {entry.item.key: entry for entry in stale}
        self.records = workspace.records("conversations")
        self.progress = Progress("conversations", len(stale))
        self.fatal: list[str] = []
        self.dropped = self.cut = 0  # repeated questions left out, articles sent only in part
        self.batched = False
        self.answered: set[str] = set()  # articles written or failed

    def where(self, key: str) -> str:
        return str(self.workspace.markdown_path(key).relative_to(self.workspace.config.project_dir))

    def article(self, key: str) -> Article:
        row = self.rows[key]
        return Article(row.file_id, row.title, row.link, row.date, row.source,
                       self.workspace.markdown_path(key).read_text(encoding="utf-8"))

    def fail(self, key: str, reason: str) -> None:
        self.result.failures.append(Failure(key, self.where(key), reason))
        self.answered.add(key)
        self.progress.advance(False)

    def failed(self, key: str, error: Exception) -> None:
        """``error`` failed the article; a fatal one marks every article not yet tried."""
        if isinstance(error, FatalAnnotationError):
            self.fatal.append(str(error))
        if isinstance(error, AnnotationError):
            return self.fail(key, str(error))
        plugin = self.workspace.config.annotator.plugin  # a plugin bug fails this article, not the run
        self.fail(key, f"annotator {plugin!r} raised {type(error).__name__}: {error}")

    def deliver(self, key: str, outcome: Annotation | AnnotationError) -> None:
        """Check and write one article's annotation (the same for a live answer and a batch's)."""
        if isinstance(outcome, AnnotationError):
            return self.failed(key, outcome)
        try:
            messages = validate_conversation(outcome.messages)
        except AnnotationError as error:
            return self.failed(key, error)
        messages, repeated = drop_repeated_questions(messages)
        text = format_conversation(messages)
        entry = self.entries[key]
        self.workspace.write_output(entry.item.file, text.encode("utf-8"))
        record = {"inputs": dict(entry.item.inputs), **file_output(text.encode("utf-8")),
                  "pairs": len(messages) // 2, "usage": dict(sorted(outcome.usage.items()))}
        extra: dict[str, Any] = {"repeated_questions": repeated} if repeated else {}
        if outcome.cut_from:
            extra["cut_from_chars"] = outcome.cut_from  # only the article's start was annotated
            self.cut += 1
        if self.batched:
            extra["batch"] = True  # priced at the Batch API's half price
        self.records.put(key, record | extra)
        self.dropped += repeated
        self.result.built += 1
        self.answered.add(key)
        self.progress.advance(True)

    def status(self, line: str) -> None:
        self.progress.note = line

    async def run(self) -> None:
        config = self.workspace.config
        annotator = config.registry.annotators[config.annotator.plugin].item
        run = annotator.start(config.annotator.options)
        self.batched = bool(run.batched)
        try:
            if self.batched:
                await self._all_at_once(run)
            else:
                await self._one_by_one(run, int(config.annotator.options["concurrency"]))
        finally:
            await run.aclose()
            self.progress.close()
        self._notes()

    async def _one_by_one(self, run: AnnotatorRun, concurrency: int) -> None:
        import asyncio

        slots = asyncio.Semaphore(concurrency)

        async def annotate_one(key: str) -> None:
            async with slots:
                if self.fatal:
                    return self.fail(key, f"{NOT_ATTEMPTED}{self.fatal[0]}")
                try:
                    annotation = await run.annotate(self.article(key))
                except Exception as error:  # noqa: BLE001 - classified by failed()
                    return self.failed(key, error)
            self.deliver(key, annotation)

        await asyncio.gather(*(annotate_one(key) for key in self.entries))

    async def _all_at_once(self, run: AnnotatorRun) -> None:
        journal = BatchJournal(self.workspace.config.cache_dir / "annotation-batches.json")
        error: Exception | None = None
        try:
            await run.annotate_all([self.article(key) for key in self.entries], journal, self.deliver, self.status)
        except Exception as raised:  # noqa: BLE001 - classified by failed()
            error = raised
        left = [key for key in self.entries if key not in self.answered]
        if not left:
            return
        if error is None:  # a plugin that returned without answering some articles
            reason = f"annotator {self.workspace.config.annotator.plugin!r} gave no answer for it"
        else:  # the run stopped: named once, then every article it did not answer
            self.failed(left[0], error)
            reason, left = self.result.failures[-1].reason, left[1:]
        for key in left:
            self.fail(key, f"{NOT_ATTEMPTED}{reason}")

    def _notes(self) -> None:
        if self.cut:
            self.result.notes.append(f"{self.cut} article(s) longer than the annotator's limit were annotated from "
                                     "their start only (their records say how long they were)")
        if self.dropped:
            self.result.notes.append(f"{self.dropped} repeated question(s) left out (the same question again, "
                                     "spaces, case and punctuation aside)")


def annotator_identity(workspace: Workspace) -> str:
    """What decides a conversation besides its markdown and row: the annotator plugin, its version and
    its output-affecting options."""
    config = workspace.config
    annotator = config.registry.annotators[config.annotator.plugin].item
    options = {k: v for k, v in config.annotator.options.items() if k not in ANNOTATOR_RUNTIME_OPTIONS}
    return workspace.identity(workspace.plugin_identity("annotators", config.annotator.plugin)
                              | {"options": annotator.identity(options)})


def within_budget(workspace: Workspace, keys: list[str]) -> None:
    """``annotator.budget_usd``: stop before any call when annotating ``keys`` would cost more."""
    budget = float(workspace.config.annotator.options.get("budget_usd") or 0)
    if not budget:
        return
    from pvbuild.stages.estimate import annotation_estimate

    estimate = annotation_estimate(workspace, keys)
    if estimate.usd is not None and estimate.usd > budget:
        raise PvbuildError(
            f"annotating {estimate.articles} article(s) with {estimate.model} would cost about ${estimate.usd:,.2f} "
            f"(~{estimate.prompt_tokens:,} prompt + ~{estimate.completion_tokens:,} completion tokens at list "
            f"prices), above annotator.budget_usd = {budget:g}: nothing was sent; raise the budget, or annotate "
            "fewer articles (sources.<name>.last_page, exclude)")


class ConversationsStage(ArticleStage):
    name = "conversations"
    writes: ClassVar[tuple[str, ...] | None] = ("conversations/*",)
    doc = "annotate each new or changed article into a conversation CSV"
    keeps_edits = True
    derived_inputs = frozenset({"markdown"})

    def article_items(self, workspace: Workspace, rows: list[UrlRow]) -> list[Item]:
        """One item per article whose markdown exists (an uncrawled article has nothing to annotate)."""
        annotator = annotator_identity(workspace)
        digests, output = workspace.row_digests, workspace.conversation_file
        markdowns = workspace.hasher.digests([workspace.markdown_file(row.file_id) for row in rows])
        return [Item(row.file_id, {"markdown": markdown, "annotator": annotator, "row": digests[row.file_id]},
                     output(row.file_id))
                for row, markdown in zip(rows, markdowns, strict=True) if markdown is not None]

    def fingerprint(self, workspace: Workspace) -> Fingerprint:
        """The annotator; per article its row's digest, its markdown's and its conversation's."""
        keys, rows = self.keys_and_rows(workspace)
        markdowns = workspace.hasher.digests([workspace.markdown_file(key) for key in keys])
        conversations = workspace.hasher.digests([workspace.conversation_file(key) for key in keys])
        annotator = annotator_identity(workspace)
        # The items (article_items), as columns: the articles with a markdown file.
        present = [position for position, markdown in enumerate(markdowns) if markdown is not None]
        if len(present) == len(keys):
            items = ItemColumns(keys, {"markdown": markdowns, "annotator": [annotator] * len(keys), "row": rows},
                                conversations)
        else:
            items = ItemColumns([keys[at] for at in present], {
                "markdown": [markdowns[at] for at in present], "annotator": [annotator] * len(present),
                "row": [rows[at] for at in present]}, [conversations[at] for at in present])
        return Fingerprint([annotator], keys, [rows, markdowns, conversations], len(present), items)

    def file(self, workspace: Workspace, key: str) -> str:
        return workspace.conversation_file(key)

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """Records of pvbuild 0.1 lack the row input: take the row the article's markdown was built from
        (the conversation was annotated from that markdown) instead of annotating every article again."""
        if not found:
            return found  # (the records need not be read)
        records, markdown = workspace.records(self.name), workspace.records("markdown")
        kept = []
        for entry in found:
            record = records.get(entry.item.key)
            inputs = record.get("inputs") if record else None
            if isinstance(inputs, dict) and "row" not in inputs:
                inputs["row"] = (markdown.get(entry.item.key) or {}).get("inputs", {}).get("row")
                records.changed.add(entry.item.key)  # written with the stage's next commit
                reason = stale_reason(entry.item, record, workspace.hasher.digest(entry.item.file))
                if reason is None:
                    continue  # the record now agrees
                entry = StaleItem(entry.item, reason)
            kept.append(entry)
        return kept

    def run(self, workspace: Workspace) -> StageResult:
        """Annotate every article whose conversation is stale."""
        stale = staleness.adopt_edits(workspace, self)
        result = StageResult(self.name, skipped=workspace.item_counts[self.name] - len(stale))
        if stale:
            within_budget(workspace, [entry.item.key for entry in stale])
            import asyncio

            with workspace.finishing(self.name):
                asyncio.run(_Annotating(workspace, stale, result).run())
        return result


STAGE = ConversationsStage()
