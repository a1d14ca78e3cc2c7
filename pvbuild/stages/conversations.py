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
from typing import ClassVar

from pvbuild.config import ANNOTATOR_RUNTIME_OPTIONS
from pvbuild.engine import staleness
from pvbuild.engine.outcomes import NOT_ATTEMPTED, Failure, StageResult
from pvbuild.engine.records import Item, digest, stale_reason
from pvbuild.engine.stage import ArticleStage, Fingerprint, StaleItem
from pvbuild.engine.url_table import UrlRow
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from pvbuild.plugin_types import (
    AnnotationError,
    Article,
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


async def _annotate(workspace: Workspace, stale: list[StaleItem], result: StageResult) -> None:
    config = workspace.config
    rows = {row.file_id: row for row in workspace.rows()}
    annotator = config.registry.annotators[config.annotator.plugin].item
    records = workspace.records("conversations")
    progress = Progress("conversations", len(stale))
    import asyncio

    slots = asyncio.Semaphore(int(config.annotator.options["concurrency"]))
    fatal: list[str] = []
    dropped, cut = [0], [0]  # repeated questions left out, articles sent only in part
    run = annotator.start(config.annotator.options)

    async def annotate_one(entry: StaleItem) -> None:
        row = rows[entry.item.key]
        markdown_path = workspace.markdown_path(row.file_id)
        where = str(markdown_path.relative_to(config.project_dir))

        def fail(reason: str) -> None:
            result.failures.append(Failure(row.file_id, where, reason))
            progress.advance(False)

        async with slots:
            if fatal:
                return fail(f"{NOT_ATTEMPTED}{fatal[0]}")
            article = Article(row.file_id, row.title, row.link, row.date, row.source,
                              markdown_path.read_text(encoding="utf-8"))
            try:
                annotation = await run.annotate(article)
                messages = validate_conversation(annotation.messages)
            except FatalAnnotationError as error:
                fatal.append(str(error))
                return fail(str(error))
            except AnnotationError as error:
                return fail(str(error))
            except Exception as error:  # noqa: BLE001 - a plugin bug fails this article, not the run
                return fail(f"annotator {config.annotator.plugin!r} raised {type(error).__name__}: {error}")
        messages, repeated = drop_repeated_questions(messages)
        text = format_conversation(messages)
        workspace.write_output(entry.item.file, text.encode("utf-8"))
        record = {"inputs": dict(entry.item.inputs), "output": digest(text.encode("utf-8")),
                  "pairs": len(messages) // 2, "usage": dict(sorted(annotation.usage.items()))}
        extra = {"repeated_questions": repeated} if repeated else {}
        if annotation.cut_from:
            extra["cut_from_chars"] = annotation.cut_from  # only the article's start was annotated
            cut[0] += 1
        records.put(row.file_id, record | extra)
        dropped[0] += repeated
        result.built += 1
        progress.advance(True)

    try:
        await asyncio.gather(*(annotate_one(entry) for entry in stale))
    finally:
        await run.aclose()
        progress.close()
    if cut[0]:
        result.notes.append(f"{cut[0]} article(s) longer than the annotator's limit were annotated from their "
                            "start only (their records say how long they were)")
    if dropped[0]:
        result.notes.append(f"{dropped[0]} repeated question(s) left out (the same question again, spaces, case "
                            "and punctuation aside)")


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
        return Fingerprint([annotator_identity(workspace)], keys, [rows, markdowns, conversations],
                           sum(markdown is not None for markdown in markdowns))

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
                asyncio.run(_annotate(workspace, stale, result))
        return result


STAGE = ConversationsStage()
