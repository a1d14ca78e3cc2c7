"""The ``openai`` annotator: one chat completion per article from any OpenAI-compatible API.

The key comes only from ``OPENAI_API_KEY``; ``base_url`` points at any compatible server.
Structured output uses a strict ``json_schema`` and falls back to ``json_object`` when the
server rejects it. 429 (rate limit), 5xx, a whole call that outlasts ``timeout`` (however
slowly the server trickles its answer) and a reply that is not complete JSON are retried with
exponential backoff (honouring ``Retry-After``); ``insufficient_quota`` and authentication
errors stop the run. A reply that is not a chat completion (an HTML page from a proxy), or a
conversation that is not valid (no JSON, roles out of order), is asked for once more; an answer
cut off at ``max_tokens`` fails at once, naming the option. With ``mode = "batch"`` the articles
go through the Batch API instead (``openai_batch``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from pvbuild import Annotation, Annotator, Article, Message, hookimpl
from pvbuild.plugin_types import (
    AnnotationError,
    AnnotatorRun,
    BatchJournal,
    Delivery,
    FatalAnnotationError,
    validate_conversation,
)

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

BAD_OUTPUT_RETRIES = 1
# Characters of an article sent at most (0: no limit): about as many tokens of Chinese text, well
# inside gpt-4o's 128k context beside the prompt and the answer. A 5 MB page is never sent whole.
MAX_ARTICLE_CHARS = 60_000
CONVERSATION_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["conversations"],
    "properties": {"conversations": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["role", "content"],
        "properties": {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": {"type": "string"}},
    }}},
}
JSON_SCHEMA_FORMAT = {"type": "json_schema",
                      "json_schema": {"name": "conversations", "strict": True, "schema": CONVERSATION_SCHEMA}}


def default_prompt() -> str:
    return resources.files("pvbuild").joinpath("prompts/annotate_zh.txt").read_text(encoding="utf-8")


def article_message(article: Article, max_chars: int = 0) -> str:
    """The article goes last, after the fixed instructions, so prompts share a cacheable prefix. Past
    ``max_chars`` only its start is sent, cut at a paragraph where one is near."""
    text = article.markdown
    if 0 < max_chars < len(text):
        cut = text.rfind("\n\n", 0, max_chars)
        kept = text[:cut if cut > max_chars * 0.8 else max_chars]
        text = f"{kept}\n\n（正文过长，只给出前 {max_chars} 字以内的部分。）"
    return f"标题：{article.title}\n发布日期：{article.date}\n原文链接：{article.link}\n\n正文：\n{text}"


def parse_conversation(content: str | None) -> list[Message]:
    try:
        data = json.loads(content or "")
    except json.JSONDecodeError as error:
        raise AnnotationError(f"the model did not return valid JSON ({error})") from error
    turns = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(turns, list):
        raise AnnotationError("the JSON has no 'conversations' list")
    if not all(isinstance(turn, dict) for turn in turns):
        raise AnnotationError("every conversation turn must be an object with 'role' and 'content'")
    return [Message(str(turn.get("role", "")), str(turn.get("content") or "")) for turn in turns]


class _CutOff(AnnotationError):
    """The answer stopped at max_tokens: asking again gives the same."""


def _choice(response: Any) -> Any:
    """The first choice of a chat completion; an HTML page or other body is named, not an AttributeError."""
    choices = getattr(response, "choices", None)
    if not choices:
        shown = " ".join(str(response).split())[:80]
        raise AnnotationError(f"the API answered with something that is not a chat completion: {shown!r}; "
                              "check annotator.base_url (a proxy or login page?)")
    return choices[0]


class _OpenAIRun(AnnotatorRun):
    def __init__(self, options: Mapping[str, Any]) -> None:
        import openai

        self.openai = openai
        self.api_key = os.environ.get("OPENAI_API_KEY", "")
        self.options = options
        self.prompt = str(options["prompt"]) or default_prompt()
        self.response_format: dict[str, Any] = (
            JSON_SCHEMA_FORMAT if options["response_format"] == "json_schema" else {"type": "json_object"})
        self.client: Any = openai.AsyncOpenAI(
            api_key=self.api_key or "unset", base_url=str(options["base_url"]) or None,
            max_retries=0, timeout=float(options["timeout"]))

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    @property
    def batched(self) -> bool:  # type: ignore[override]
        return self.options["mode"] == "batch"

    async def annotate_all(self, articles: list[Article], journal: BatchJournal, deliver: Delivery,
                           status: Callable[[str], None]) -> None:
        self._need_key()
        from pvbuild.builtins.openai_batch import annotate_in_batches

        await annotate_in_batches(self, articles, journal, deliver, status)

    def _need_key(self) -> None:
        if not self.api_key:
            raise FatalAnnotationError("OPENAI_API_KEY is not set; export it (it is never stored)")

    async def annotate(self, article: Article) -> Annotation:
        self._need_key()
        usage: dict[str, int] = {}
        bad_output_left = BAD_OUTPUT_RETRIES
        attempt = 0
        while True:
            try:
                import asyncio  # not at the top: every command loads this plugin, only annotation awaits

                # The client's timeout bounds each read; this bounds the whole call (a server that
                # trickles a byte every few seconds would otherwise hold it for minutes).
                response = await asyncio.wait_for(self._complete(article), float(self.options["timeout"]))
            except AnnotationError:
                raise
            except Exception as error:  # noqa: BLE001 - classified below
                attempt += 1
                await self._backoff_or_raise(error, attempt)
                continue
            try:
                return self.annotation_of(response, article, usage)
            except _CutOff:
                raise
            except AnnotationError:
                if bad_output_left <= 0:
                    raise
                bad_output_left -= 1

    def annotation_of(self, response: Any, article: Article, usage: dict[str, int] | None = None) -> Annotation:
        """The conversation in a chat completion, checked; ``usage`` adds up the tokens of every try."""
        choice = _choice(response)
        usage = {} if usage is None else usage
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            usage[key] = usage.get(key, 0) + int(getattr(response.usage, key, 0) or 0)
        if getattr(choice, "finish_reason", None) == "length":
            raise _CutOff(f"the answer was cut off at max_tokens = {self.options['max_tokens']} "
                          "(finish_reason: length); raise annotator.max_tokens or shorten the article")
        messages = parse_conversation(choice.message.content)
        if not messages:
            raise AnnotationError("the model returned an empty conversation list")
        limit = int(self.options["max_article_chars"])
        cut_from = len(article.markdown) if 0 < limit < len(article.markdown) else 0
        return Annotation(validate_conversation(messages), usage, cut_from)

    def request(self, article: Article) -> dict[str, Any]:
        """The chat completion request for ``article`` (without its response format)."""
        return {"model": self.options["model"], "temperature": self.options["temperature"],
                "max_tokens": self.options["max_tokens"],
                "messages": [{"role": "system", "content": self.prompt},
                             {"role": "user", "content": article_message(article,
                                                                         int(self.options["max_article_chars"]))}]}

    async def _complete(self, article: Article) -> Any:
        request = self.request(article)
        try:
            return await self.client.chat.completions.create(response_format=self.response_format, **request)
        except self.openai.BadRequestError as error:
            text = str(error).lower()
            if self.response_format["type"] == "json_schema" and ("response_format" in text or "json_schema" in text):
                self.response_format = {"type": "json_object"}  # the server has no strict schemas
                return await self.client.chat.completions.create(response_format=self.response_format, **request)
            raise AnnotationError(f"the API rejected the request: {self._redact(str(error))}") from error

    def fatal_or_none(self, error: Exception) -> FatalAnnotationError | None:
        """The error that stops every article (no quota, bad key), or None for one that fails one."""
        openai = self.openai
        message = self._redact(f"{type(error).__name__}: {error}")
        if isinstance(error, openai.RateLimitError) and "insufficient_quota" in f"{error.code} {error}":
            return FatalAnnotationError(f"no quota left on this API key ({message}); add credit and rerun")
        if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
            return FatalAnnotationError(f"authentication failed ({message}); check OPENAI_API_KEY")
        return None

    async def _backoff_or_raise(self, error: Exception, attempt: int) -> None:
        openai = self.openai
        message = self._redact(f"{type(error).__name__}: {error}")
        fatal = self.fatal_or_none(error)
        if fatal is not None:
            raise fatal
        if isinstance(error, TimeoutError):
            message = f"no complete answer within timeout = {self.options['timeout']} s"
        elif isinstance(error, ValueError):  # the client could not parse the body (cut off, not JSON)
            message = f"the API's reply was not complete JSON, cut off or garbled ({message})"
        retryable = isinstance(error, openai.RateLimitError | openai.InternalServerError | openai.APIConnectionError
                               | TimeoutError | ValueError)
        if not retryable:
            raise AnnotationError(message) from error
        if attempt > int(self.options["max_retries"]):
            raise AnnotationError(f"gave up after {attempt} attempts: {message}") from error
        delay = float(self.options["retry_base_delay"]) * 2 ** (attempt - 1) * (1 + random.random() / 4)
        retry_after = getattr(getattr(error, "response", None), "headers", {}).get("retry-after")
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(retry_after))
        import asyncio

        await asyncio.sleep(min(delay, 60.0))

    async def aclose(self) -> None:
        await self.client.close()


class OpenAIAnnotator(Annotator):
    """Annotates through the chat completions API of OpenAI or any compatible server."""

    name = "openai"
    description = "One chat completion per article through any OpenAI-compatible API (OPENAI_API_KEY)"
    options = {"model": "gpt-4o", "base_url": "", "prompt": "", "prompt_file": "", "temperature": 0.3,
               "max_tokens": 4096, "response_format": "json_schema", "timeout": 120.0, "max_retries": 5,
               "retry_base_delay": 1.0, "max_article_chars": MAX_ARTICLE_CHARS,
               "price_per_million_tokens": [],  # [input, output] USD; default: pvbuild.prices for the model
               "mode": "live", "batch_poll_seconds": 30.0, "batch_max_requests": 50_000}
    # Options that change how a call is made or what the report says it cost, not what it returns.
    runtime_options = frozenset({"concurrency", "timeout", "max_retries", "retry_base_delay", "prompt_file",
                                 "price_per_million_tokens", "mode", "batch_poll_seconds", "batch_max_requests"})

    def identity(self, options: Mapping[str, Any]) -> dict[str, Any]:
        # The prompt text itself decides the output, whether it is inline, from a file or built in.
        resolved = dict(options, prompt=str(options["prompt"]) or default_prompt())
        if resolved.get("max_article_chars") == MAX_ARTICLE_CHARS:
            del resolved["max_article_chars"]  # added after 0.1: at its default, 0.1's conversations stay valid
        return super().identity(resolved)

    def start(self, options: Mapping[str, Any]) -> AnnotatorRun:
        return _OpenAIRun(options)

    def sent_text(self, options: Mapping[str, Any], article: Article) -> str:
        prompt = str(options["prompt"]) or default_prompt()
        return f"{prompt}\n{article_message(article, int(options['max_article_chars']))}"


@hookimpl
def register_annotators(register: Callable[[Annotator], None]) -> None:
    register(OpenAIAnnotator())
