"""Crawl throughput: 200 fixture article pages served with 100 ms latency on 127.0.0.1.

pvbuild's fetcher (one crawl4ai crawler for the run, bounded concurrency; at the default
concurrency and per-host politeness, and with both raised to 32) versus the reference
approach (a new crawler per page, one page at a time), in the same process. Target: >= 10x.

Run: python bench/bench_crawl.py [pages] [latency_seconds]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pvbuild.builtins.bjx import BJX_SELECTORS  # noqa: E402
from pvbuild.config import CRAWL_OPTIONS  # noqa: E402
from pvbuild.fetch import PageFetcher  # noqa: E402
from tests.standins import FixtureArticle, FixtureSite  # noqa: E402

SELECTOR = BJX_SELECTORS["article_selector"]


async def reference(urls: list[str]) -> int:
    from crawl4ai import AsyncWebCrawler, BrowserConfig, CacheMode, CrawlerRunConfig
    from crawl4ai.async_configs import HTTPCrawlerConfig
    from crawl4ai.async_crawler_strategy import AsyncHTTPCrawlerStrategy

    ok = 0
    for url in urls:  # a new crawler per page, one by one
        strategy = AsyncHTTPCrawlerStrategy(browser_config=HTTPCrawlerConfig())
        async with AsyncWebCrawler(crawler_strategy=strategy, config=BrowserConfig(verbose=False)) as crawler:
            result = await crawler.arun(url, config=CrawlerRunConfig(
                cache_mode=CacheMode.BYPASS, css_selector=SELECTOR, verbose=False))
            ok += bool(result.markdown)
    return ok


async def pvbuild_fetch(urls: list[str], concurrency: int, per_host: int) -> int:
    options = {**CRAWL_OPTIONS, "concurrency": concurrency, "per_host_concurrency": per_host}
    async with PageFetcher(concurrency) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(url, options, css_selector=SELECTOR) for url in urls))
    return sum(bool(r.ok and r.markdown) for r in results)


def main(pages: int, latency: float) -> None:
    articles = [FixtureArticle(str(100000 + i), f"文章{i}", "2025-08-01", [f"第{i}篇文章的正文。" * 20])
                for i in range(pages)]
    with FixtureSite([articles], latency=latency) as site:
        urls = [site.url + a.path for a in articles]
        started = time.perf_counter()
        ok_ref = asyncio.run(reference(urls))
        ref = time.perf_counter() - started
        print(f"reference (new crawler per page, sequential): {pages} pages, {ok_ref} ok, {ref:.2f}s, "
              f"{pages / ref:.1f} pages/s")
        defaults = (int(CRAWL_OPTIONS["concurrency"]), int(CRAWL_OPTIONS["per_host_concurrency"]))
        for concurrency, per_host in (defaults, (32, 32)):
            started = time.perf_counter()
            ok_ours = asyncio.run(pvbuild_fetch(urls, concurrency, per_host))
            ours = time.perf_counter() - started
            print(f"pvbuild (one crawler, concurrency {concurrency}, {per_host} per host"
                  f"{', the defaults' if (concurrency, per_host) == defaults else ''}): {pages} pages, "
                  f"{ok_ours} ok, {ours:.2f}s, {pages / ours:.1f} pages/s, {ref / ours:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, float(sys.argv[2]) if len(sys.argv) > 2 else 0.1)
