"""Annotation throughput: 200 articles against the local OpenAI-compatible server at 300 ms latency.

pvbuild's annotation stage machinery (the ``openai`` annotator at the default concurrency of
the production profile) versus one call at a time, in the same process. Target: >= 12x.

Run: python bench/bench_annotate.py [articles] [latency_seconds]
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pvbuild.builtins.openai_annotator import OpenAIAnnotator  # noqa: E402
from pvbuild.config import load_config  # noqa: E402
from pvbuild.plugin_types import Article  # noqa: E402
from tests.standins import FakeOpenAI  # noqa: E402


async def annotate_all(articles: list[Article], options: dict[str, object], concurrency: int) -> int:
    run = OpenAIAnnotator().start(options)
    slots = asyncio.Semaphore(concurrency)

    async def one(article: Article) -> int:
        async with slots:
            return len((await run.annotate(article)).messages)

    try:
        return sum(await asyncio.gather(*(one(a) for a in articles)))
    finally:
        await run.aclose()


def main(count: int, latency: float) -> None:
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    production = load_config(Path(__file__).resolve().parent.parent, "production").annotator.options
    default_concurrency = int(production["concurrency"])
    articles = [Article(str(i), f"文章{i}", f"https://x.invalid/{i}", "2025-08-01", "bench", "正文。" * 200)
                for i in range(count)]
    with FakeOpenAI(latency=latency) as server:
        options = {**production, "base_url": server.url + "/v1"}
        started = time.perf_counter()
        asyncio.run(annotate_all(articles, options, 1))
        sequential = time.perf_counter() - started
        print(f"one call at a time: {count} articles, {sequential:.2f}s, {count / sequential:.1f}/s")
        for concurrency in (default_concurrency, 16):
            started = time.perf_counter()
            asyncio.run(annotate_all(articles, options, concurrency))
            ours = time.perf_counter() - started
            print(f"pvbuild concurrency {concurrency}: {count} articles, {ours:.2f}s, {count / ours:.1f}/s, "
                  f"{sequential / ours:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, float(sys.argv[2]) if len(sys.argv) > 2 else 0.3)
