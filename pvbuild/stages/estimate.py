"""What the next annotation would cost, before a call is made: tokens per stale article estimated from what
the annotator would send for it (its instructions and the article, as ``Annotator.sent_text`` gives them),
the completion from what earlier articles took, priced at the annotator model's list price
(``pvbuild.prices``; half of it in batch mode). Used by ``pvbuild plan`` and by ``annotator.budget_usd``,
which stops the conversations step before any call when the estimate is above it.

No tokenizer is at hand offline (tiktoken fetches its encodings from the network), so a count stands in:
a CJK character is about one token and other text about four characters a token; the recorded usage of
earlier articles, where there is some, corrects it (the ratio of recorded prompt tokens to the estimate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pvbuild.engine.workspace import Workspace
from pvbuild.plugin_types import Article
from pvbuild.prices import annotation_cost, token_price

PROMPT_OVERHEAD = 400  # tokens of instructions around an article, for an annotator that does not say
COMPLETION_WITHOUT_RECORDS = 500  # tokens an answer takes when no article has been annotated yet


@dataclass(frozen=True)
class Estimate:
    """The annotation of ``articles`` articles: tokens, and USD at the model's price (None: no price/free)."""

    articles: int
    uncrawled: int  # stale articles with no markdown yet (a new site before its crawl): not in the figures
    prompt_tokens: int
    completion_tokens: int
    usd: float | None
    model: str


def text_tokens(text: str) -> int:
    """About how many tokens ``text`` is: a CJK character one, other characters four to a token."""
    cjk = sum(1 for char in text if "\u3000" <= char <= "\u9fff" or "\uff00" <= char <= "\uffef")
    return cjk + math.ceil((len(text) - cjk) / 4)


def _calibration(workspace: Workspace, sent: Callable[[str, str], int]) -> tuple[float, int]:
    """The recorded prompt tokens over their estimate, and the mean recorded completion, from earlier articles."""
    records = workspace.records("conversations")
    recorded, estimated, completions = 0, 0, []
    for key, record in records.records.items():
        usage = record.get("usage") or {}
        path = workspace.markdown_path(key)
        if usage.get("prompt_tokens") and path.is_file():
            recorded += int(usage["prompt_tokens"])
            estimated += sent(key, path.read_text(encoding="utf-8"))
            completions.append(int(usage.get("completion_tokens", 0)))
    ratio = recorded / estimated if estimated else 1.0
    completion = round(sum(completions) / len(completions)) if completions else COMPLETION_WITHOUT_RECORDS
    return ratio, completion


def _sent_tokens(workspace: Workspace) -> Callable[[str, str], int]:
    """A function of an article's key and markdown giving the estimated tokens of what one call sends for it."""
    options = workspace.config.annotator.options
    annotator = workspace.config.registry.annotators[workspace.config.annotator.plugin].item
    rows = {row.file_id: row for row in workspace.rows()}

    def sent(key: str, markdown: str) -> int:
        row = rows.get(key)
        text = annotator.sent_text(options, Article(key, row.title, row.link, row.date, row.source, markdown)) \
            if row is not None else None
        return text_tokens(text) if text is not None else text_tokens(markdown) + PROMPT_OVERHEAD

    return sent


def annotation_estimate(workspace: Workspace, keys: Iterable[str]) -> Estimate:
    """The estimate for annotating the articles ``keys`` (their markdown as it is now)."""
    options = workspace.config.annotator.options
    model = str(options.get("model") or "")
    sent = _sent_tokens(workspace)
    ratio, completion = _calibration(workspace, sent)
    articles, uncrawled, prompt_tokens = 0, 0, 0
    for key in keys:
        path = workspace.markdown_path(key)
        if path.is_file():
            articles += 1
            prompt_tokens += round(sent(key, path.read_text(encoding="utf-8")) * ratio)
        else:
            uncrawled += 1
    completion_tokens = articles * completion
    price = token_price(model, options.get("price_per_million_tokens")) if model else None
    tokens = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    if options.get("mode") == "batch":  # every article through the Batch API, at half price
        tokens |= {f"batch_{name}": count for name, count in list(tokens.items())}
    usd = annotation_cost(tokens, price)
    return Estimate(articles, uncrawled, prompt_tokens, completion_tokens, usd, model)
