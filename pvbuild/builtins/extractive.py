"""The ``extractive`` annotator: deterministic Q&A from an article's own headings and sentences.

No LLM and no network: the default profile uses it so the whole chain runs offline. Every
answer is copied from the article, so it is faithful by construction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pvbuild import Annotation, Annotator, Article, Message, hookimpl
from pvbuild.plugin_types import AnnotatorRun

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_SENTENCE = re.compile(r"[^。！？!?]+[。！？!?]?")
_QUESTION_PREFIX = re.compile(r"^(问|Q)[：:]\s*")
_ANSWER_PREFIX = re.compile(r"^(答|A)[：:]\s*")


def sections(markdown: str) -> list[tuple[str, str]]:
    """(heading, text) pairs; the text before the first heading has heading ''."""
    found: list[tuple[str, list[str]]] = [("", [])]
    for line in markdown.splitlines():
        match = _HEADING.match(line.strip())
        if match:
            found.append((match.group(2).strip(), []))
        elif line.strip():
            found[-1][1].append(line.strip())
    return [(heading, " ".join(lines)) for heading, lines in found if lines]


def sentences(text: str, limit: int) -> str:
    return "".join(part.strip() for part in _SENTENCE.findall(text)[:limit] if part.strip())


class _ExtractiveRun(AnnotatorRun):
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.max_pairs = int(options["max_pairs"])
        self.per_answer = int(options["sentences_per_answer"])

    async def annotate(self, article: Article) -> Annotation:
        parts = sections(article.markdown)
        body = " ".join(text for _, text in parts)
        pairs = [(f"请用三句话概括《{article.title}》的主要内容。", sentences(body, 3))]
        for heading, text in parts:
            if not heading:
                continue
            if _QUESTION_PREFIX.match(heading):
                question = _QUESTION_PREFIX.sub("", heading)
                answer = _ANSWER_PREFIX.sub("", sentences(text, self.per_answer))
            else:
                question = f"《{article.title}》中关于“{heading}”有哪些规定或内容？"
                answer = sentences(text, self.per_answer)
            pairs.append((question, answer))
        if article.date:
            pairs.append((f"《{article.title}》是什么时候发布的？", f"这篇文章发布于{article.date}。"))
        if "补贴" not in body:
            pairs.append(("这项政策有没有提到具体的补贴金额？",
                          "文章未提及具体的补贴金额，原文没有涉及补贴标准方面的信息。"))
        messages = []
        for question, answer in pairs[: self.max_pairs]:
            if answer:
                messages += [Message("user", question), Message("assistant", answer)]
        return Annotation(messages, {"prompt_tokens": 0, "completion_tokens": 0})


class ExtractiveAnnotator(Annotator):
    """Builds question/answer pairs from headings and leading sentences, without an LLM."""

    name = "extractive"
    description = "Deterministic Q&A from the article's own headings and sentences (no LLM, offline)"
    options = {"max_pairs": 8, "sentences_per_answer": 3}

    def start(self, options: Mapping[str, Any]) -> AnnotatorRun:
        return _ExtractiveRun(options)


@hookimpl
def register_annotators(register: Callable[[Annotator], None]) -> None:
    register(ExtractiveAnnotator())
