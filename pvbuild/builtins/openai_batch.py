"""The ``openai`` annotator's batch mode (``annotator.mode = "batch"``): OpenAI's Batch API, at half
the price of live calls and outside their rate limits, with results within its 24-hour window.

The stale articles' requests go into JSONL input files (at most ``batch_max_requests`` lines and
190 MB each, inside the API's 50,000 and 200 MB), uploaded through the Files API. Each input file's
id, and then its batch's id, are written to the journal the moment they exist, beside the digest of
every request in it: a rerun (after Ctrl-C, or while the batches still run) re-attaches to a batch
for every request that is still the same request, and submits only the others. A batch whose
requests are all outdated (the article changed meanwhile) is cancelled. Results are applied per
article as each batch ends, through the same checks as a live answer; a failed line, and a request
that an expired or cancelled batch never ran, fail that article, which the next run sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pvbuild.plugin_types import Annotation, AnnotationError, Article, BatchJournal, Delivery, FatalAnnotationError

MAX_FILE_BYTES = 190 * 2**20
ENDPOINT = "/v1/chat/completions"
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})


class BatchRun(Protocol):
    """What batch mode needs of the live run: its client, options and the request/answer shapes."""

    client: Any
    options: Any
    response_format: dict[str, Any]

    def request(self, article: Article) -> dict[str, Any]: ...

    def annotation_of(self, response: Any, article: Article, usage: dict[str, int] | None = None) -> Annotation: ...

    def fatal_or_none(self, error: Exception) -> FatalAnnotationError | None: ...


@dataclass(frozen=True)
class _Request:
    article: Article
    line: bytes  # the JSONL line of the input file
    digest: str  # what re-attaching compares: the request body's SHA-256


def _requests(run: BatchRun, articles: list[Article]) -> dict[str, _Request]:
    found = {}
    for article in articles:
        body = {**run.request(article), "response_format": run.response_format}
        text = json.dumps(body, ensure_ascii=False, sort_keys=True)
        line = json.dumps({"custom_id": article.file_id, "method": "POST", "url": ENDPOINT, "body": body},
                          ensure_ascii=False).encode("utf-8") + b"\n"
        found[article.file_id] = _Request(article, line, hashlib.sha256(text.encode("utf-8")).hexdigest())
    return found


def _chunks(requests: list[_Request], max_requests: int) -> Iterator[list[_Request]]:
    """Input files within the API's limits: ``max_requests`` lines and MAX_FILE_BYTES each."""
    chunk: list[_Request] = []
    size = 0
    for request in requests:
        if chunk and (len(chunk) >= max_requests or size + len(request.line) > MAX_FILE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(request)
        size += len(request.line)
    if chunk:
        yield chunk


class _Batches:
    """One run's batches: submitting, re-attaching, polling, and handing out the results."""

    def __init__(self, run: BatchRun, articles: list[Article], journal: BatchJournal, deliver: Delivery,
                 status: Callable[[str], None]) -> None:
        self.run, self.journal, self.deliver, self.status = run, journal, deliver, status
        self.requests = _requests(run, articles)
        self.pending: list[dict[str, Any]] = []  # journal entries of the batches this run waits for
        self.statuses: dict[str, str] = {}  # by input file: the batch's last status
        self.counts: dict[str, Counter[str]] = {}  # by input file: the batch's request counts

    def wanted(self, entry: dict[str, Any]) -> set[str]:
        """The requests of a journal entry that are still this run's requests, unchanged."""
        return {key for key, digest in entry["requests"].items()
                if key in self.requests and self.requests[key].digest == digest}

    async def reattach(self) -> set[str]:
        """Take up the journal's batches that still hold wanted requests; cancel the others."""
        attached: set[str] = set()
        for entry in self.journal.entries():
            wanted = self.wanted(entry) - attached
            if not wanted:
                await self._cancel(entry)
                continue
            if not entry.get("batch"):  # uploaded, then interrupted before the batch was created
                await self._create(entry)
            attached |= wanted
            self.pending.append(entry)
        return attached

    async def submit(self, requests: list[_Request]) -> None:
        client = self.run.client
        for chunk in _chunks(requests, int(self.run.options["batch_max_requests"])):
            data = b"".join(request.line for request in chunk)
            uploaded = await client.files.create(file=("pvbuild-batch.jsonl", data), purpose="batch")
            entry = {"input_file": uploaded.id, "requests": {r.article.file_id: r.digest for r in chunk}}
            self.journal.put(entry)
            await self._create(entry)
            self.pending.append(entry)

    async def _create(self, entry: dict[str, Any]) -> None:
        batch = await self.run.client.batches.create(input_file_id=entry["input_file"], endpoint=ENDPOINT,
                                                     completion_window="24h",
                                                     metadata={"made_by": "pvbuild"})
        entry["batch"] = batch.id
        self.journal.put(entry)

    async def _cancel(self, entry: dict[str, Any]) -> None:
        """Stop a batch nobody needs any more (best effort: it may have ended already)."""
        if entry.get("batch"):
            with contextlib.suppress(Exception):  # an ended batch cannot be cancelled; dropped either way
                await self.run.client.batches.cancel(entry["batch"])
        self.journal.drop(entry["input_file"])

    async def wait(self) -> None:
        """Poll every pending batch until each has ended, applying each one's results as it ends."""
        poll = float(self.run.options["batch_poll_seconds"])
        while self.pending:
            for entry in list(self.pending):
                batch = await self.run.client.batches.retrieve(entry["batch"])
                self.statuses[entry["input_file"]] = batch.status
                counts = getattr(batch, "request_counts", None)
                self.counts[entry["input_file"]] = Counter(
                    {key: int(getattr(counts, key, 0) or 0) for key in ("total", "completed", "failed")})
                if batch.status in ENDED:
                    await self._collect(entry, batch)
                    self.journal.drop(entry["input_file"])
                    self.pending.remove(entry)
            self.status(self.summary())
            if self.pending:
                await asyncio.sleep(poll)

    def summary(self) -> str:
        """``batches: 2 in_progress, 1 completed; requests 310/500 done, 12 failed``."""
        by_status = Counter(self.statuses.values())
        counts: Counter[str] = sum(self.counts.values(), Counter())
        states = ", ".join(f"{number} {status}" for status, number in sorted(by_status.items()))
        return (f"batches: {states}; requests {counts['completed'] + counts['failed']}/{counts['total']} done, "
                f"{counts['failed']} failed")

    async def _collect(self, entry: dict[str, Any], batch: Any) -> None:
        wanted = self.wanted(entry)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self.run.client.files.content(file_id)
                for line in content.text.splitlines():
                    if line.strip():
                        self._result(json.loads(line), wanted)
        why = {"expired": "the batch expired (24 h) before this request ran",
               "cancelled": "the batch was cancelled before this request ran",
               "failed": "the batch was refused: " + "; ".join(
                   str(getattr(error, "message", error)) for error in getattr(getattr(batch, "errors", None),
                                                                              "data", None) or [])}
        for key in sorted(wanted):  # what no result line answered
            reason = why.get(batch.status, f"the batch ended ({batch.status}) without an answer for it")
            self.deliver(key, AnnotationError(f"{reason} (batch {batch.id}); it is sent again next run"))

    def _result(self, line: dict[str, Any], wanted: set[str]) -> None:
        """One line of an output or error file: an answer to check, or the error that failed it."""
        key = str(line.get("custom_id"))
        if key not in wanted:
            return  # a request this run no longer makes (its article changed)
        wanted.discard(key)
        response = line.get("response") or {}
        body, status = response.get("body"), response.get("status_code")
        if line.get("error") or status != 200:
            error = line.get("error") or (body or {}).get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            self.deliver(key, AnnotationError(f"the batch answered HTTP {status} for this request: {message}"))
            return
        try:
            self.deliver(key, self.run.annotation_of(_completion(body), self.requests[key].article))
        except AnnotationError as error:
            self.deliver(key, error)


def _completion(body: Any) -> Any:
    """A result line's body as the chat completion the live path gets (or an error naming what came)."""
    from openai.types.chat import ChatCompletion
    from pydantic import ValidationError

    try:
        return ChatCompletion.model_validate(body)
    except ValidationError as error:
        shown = " ".join(json.dumps(body, ensure_ascii=False).split())[:80]
        raise AnnotationError(f"the batch's answer is not a chat completion: {shown!r}") from error


async def annotate_in_batches(run: BatchRun, articles: list[Article], journal: BatchJournal, deliver: Delivery,
                              status: Callable[[str], None]) -> None:
    """Annotate ``articles`` through the Batch API, re-attaching to the journal's batches first."""
    batches = _Batches(run, articles, journal, deliver, status)
    try:
        attached = await batches.reattach()
        fresh = [request for key, request in batches.requests.items() if key not in attached]
        if attached:
            status(f"re-attached to {len(batches.pending)} batch(es) holding {len(attached)} request(s)")
        await batches.submit(fresh)
        await batches.wait()
    except AnnotationError:
        raise
    except Exception as error:  # noqa: BLE001 - authentication and quota stop the run; the rest is named
        fatal = run.fatal_or_none(error)
        if fatal is not None:
            raise fatal from error
        raise FatalAnnotationError(f"the Batch API failed: {type(error).__name__}: {error}; the batches already "
                                   "submitted are in the journal and a rerun re-attaches to them") from error
