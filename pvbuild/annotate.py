"""The annotation stage: one conversation CSV per article, written only when it is valid.

A failed article writes nothing (so it is retried next run) and the others go on; a fatal
error (no credentials, no quota) stops the stage and marks the rest as not attempted.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterable

from pvbuild.outcomes import Failure, StageResult
from pvbuild.pipeline import Pipeline, StaleItem
from pvbuild.plugin_types import AnnotationError, Article, FatalAnnotationError, Message
from pvbuild.progress import Progress
from pvbuild.records import atomic_write_text, digest

ROLES = ("user", "assistant")


def validate_conversation(messages: Iterable[Message]) -> list[Message]:
    """At least one pair, roles alternating user/assistant from a user turn, nothing empty."""
    checked = list(messages)
    if not checked:
        raise AnnotationError("the conversation is empty")
    for index, message in enumerate(checked):
        expected = ROLES[index % 2]
        if message.role != expected:
            raise AnnotationError(f"message {index + 1} has role {message.role!r}, expected {expected!r} "
                                  "(roles must alternate user, assistant)")
        if not isinstance(message.content, str) or not message.content.strip():
            raise AnnotationError(f"message {index + 1} ({message.role}) is empty")
    if len(checked) % 2:
        raise AnnotationError("the conversation ends with a user turn that has no answer")
    return checked


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


async def _annotate(pipeline: Pipeline, stale: list[StaleItem], result: StageResult) -> None:
    config = pipeline.config
    rows = {row.file_id: row for row in pipeline.rows()}
    annotator = config.registry.annotators[config.annotator.plugin].item
    records = pipeline.records("conversations")
    progress = Progress("conversations", len(stale))
    slots = asyncio.Semaphore(int(config.annotator.options["concurrency"]))
    fatal: list[str] = []
    run = annotator.start(config.annotator.options)

    async def annotate_one(entry: StaleItem) -> None:
        row = rows[entry.item.key]
        markdown_path = pipeline.markdown_path(row.file_id)
        where = str(markdown_path.relative_to(config.project_dir))

        def fail(reason: str) -> None:
            result.failures.append(Failure(row.file_id, where, reason))
            progress.advance(False)

        async with slots:
            if fatal:
                return fail(f"not attempted: {fatal[0]}")
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
        text = format_conversation(messages)
        atomic_write_text(entry.item.output, text)
        records.put(row.file_id, {"inputs": dict(entry.item.inputs), "output": digest(text.encode("utf-8")),
                                  "pairs": len(messages) // 2, "usage": dict(sorted(annotation.usage.items()))})
        result.built += 1
        progress.advance(True)

    try:
        await asyncio.gather(*(annotate_one(entry) for entry in stale))
    finally:
        await run.aclose()
        progress.close()


def run_conversations_stage(pipeline: Pipeline) -> StageResult:
    """Annotate every article whose conversation is stale."""
    stale = pipeline.adopt_edits("conversations")
    result = StageResult("conversations", skipped=len(pipeline.items("conversations")) - len(stale))
    if stale:
        with pipeline.finishing("conversations"):
            asyncio.run(_annotate(pipeline, stale, result))
    return result
