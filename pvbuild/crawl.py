"""The crawl stages: list pages → URL table, and article pages → one markdown file per article."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from pvbuild.config import SourceConfig
from pvbuild.fetch import Fetched, PageFetcher
from pvbuild.outcomes import Failure, StageResult
from pvbuild.pipeline import Pipeline, StaleItem
from pvbuild.plugin_types import CssSite
from pvbuild.progress import Progress
from pvbuild.records import atomic_write_bytes, atomic_write_text, digest
from pvbuild.urls import UrlRow, file_id_for, is_web_link, merge_urls, normalize_date, read_urls, write_urls

UrlMap = Callable[[str], str]


def list_schema(site: CssSite) -> dict[str, Any]:
    """The crawl4ai ``JsonCssExtractionStrategy`` schema of a site's list pages."""
    return {"name": site.name, "baseSelector": site.item_selector, "fields": [
        {"name": "title", "selector": site.title_selector, "type": "text"},
        {"name": "link", "selector": site.link_selector, "type": "attribute", "attribute": "href"},
        {"name": "date", "selector": site.date_selector, "type": "text"},
    ]}


def _rows_from_list_page(page: Fetched, canonical_url: str, source: SourceConfig,
                         skipped: list[str]) -> list[UrlRow]:
    rows = []
    for entry in json.loads(page.extracted or "[]"):
        href, title = (entry.get("link") or "").strip(), " ".join((entry.get("title") or "").split())
        if not href or not title:
            continue
        link = urljoin(canonical_url, href)
        if not is_web_link(link):
            skipped.append(link)  # javascript:, mailto:: not an article; counted in the summary
            continue
        rows.append(UrlRow(title=title, link=link, date=normalize_date(entry.get("date") or ""),
                           file_id=file_id_for(link), source=source.name))
    return rows


def _crawl4ai_home(pipeline: Pipeline) -> str:
    home = pipeline.config.cache_dir / "crawl4ai"
    home.mkdir(parents=True, exist_ok=True)
    return str(home)


def _site(pipeline: Pipeline, source: SourceConfig) -> CssSite:
    return pipeline.config.registry.crawlers[source.plugin].item


async def _open(stack: contextlib.AsyncExitStack, pipeline: Pipeline,
                sources: list[SourceConfig]) -> tuple[dict[str, UrlMap], PageFetcher]:
    """Serve each source's site for the run and open the run's single fetcher."""
    maps = {source.name: await stack.enter_async_context(_site(pipeline, source).serve()) for source in sources}
    concurrency = max(int(source.options["concurrency"]) for source in sources)
    fetcher = await stack.enter_async_context(PageFetcher(concurrency, _crawl4ai_home(pipeline)))
    return maps, fetcher


async def _crawl_lists(pipeline: Pipeline, result: StageResult, skipped: list[str]) -> list[UrlRow]:
    sources = list(pipeline.config.sources)
    pages = [(source, url) for source in sources for url in _site(pipeline, source).list_urls(source.options)]
    progress = Progress("urls", len(pages))
    async with contextlib.AsyncExitStack() as stack:
        maps, fetcher = await _open(stack, pipeline, sources)

        async def crawl_page(source: SourceConfig, url: str) -> list[UrlRow]:
            site = _site(pipeline, source)
            page = await fetcher.fetch(maps[source.name](url), source.options, schema=list_schema(site))
            rows = _rows_from_list_page(page, url, source, skipped) if page.ok else []
            if not rows:
                why = page.error if not page.ok else f"no items matched {site.item_selector!r}"
                result.failures.append(Failure(f"{source.name} list page", url, why or "fetch failed"))
            progress.advance(bool(rows))
            return rows

        found = await asyncio.gather(*(crawl_page(source, url) for source, url in pages))
    progress.close()
    return [row for rows in found for row in rows]


def run_urls_stage(pipeline: Pipeline) -> StageResult:
    """Crawl every list page and merge the rows into the URL table (a hand-edited table that is
    otherwise up to date is kept as it is)."""
    result = StageResult("urls")
    stale = pipeline.stale("urls")
    if stale and not pipeline.adopt_edits("urls") and not pipeline.forced:
        result.skipped = 1
        return result
    skipped: list[str] = []
    crawled = asyncio.run(_crawl_lists(pipeline, result, skipped))
    atomic_write_text(pipeline.last_list_crawl_file, str(time.time()))
    if skipped:
        result.notes.append(f"{len(skipped)} non-HTTP link(s) left out (e.g. {skipped[0][:60]})")
    merged = merge_urls(read_urls(pipeline.urls_csv), crawled, (source.name for source in pipeline.config.sources))
    write_urls(pipeline.urls_csv, merged)
    pipeline.forget_rows()
    records = pipeline.records("urls")
    item = pipeline.url_items()[0]
    if result.failures:
        records.drop(item.key)  # some list page failed: crawl the lists again next run
    else:
        records.put(item.key, {"inputs": dict(item.inputs), "output": pipeline.hasher.digest(item.file),
                               "rows": len(merged)})
        result.built = 1
    pipeline.finish("urls")
    return result


async def _crawl_articles(pipeline: Pipeline, stale: list[StaleItem], result: StageResult) -> None:
    rows = {row.file_id: row for row in pipeline.rows()}
    records = pipeline.records("markdown")
    progress = Progress("markdown", len(stale))
    sources = [pipeline.source(name) for name in sorted({rows[entry.item.key].source for entry in stale})]
    async with contextlib.AsyncExitStack() as stack:
        maps, fetcher = await _open(stack, pipeline, sources)

        async def crawl_article(entry: StaleItem) -> None:
            row = rows[entry.item.key]
            source = pipeline.source(row.source)
            site = _site(pipeline, source)
            page = await fetcher.fetch(maps[row.source](row.link), source.options, css_selector=site.article_selector)
            markdown = page.markdown.strip()
            if not page.ok:
                result.failures.append(Failure(row.file_id, row.link, page.error or f"HTTP {page.status}"))
            elif not markdown:
                result.failures.append(Failure(row.file_id, row.link,
                                               f"the article selector {site.article_selector!r} matched nothing"))
            else:
                data = (markdown + "\n").encode("utf-8")
                atomic_write_bytes(entry.item.output, data)
                records.put(row.file_id, {"inputs": dict(entry.item.inputs), "output": digest(data),
                                          "url": row.link})
                result.built += 1
            progress.advance(page.ok and bool(markdown))

        await asyncio.gather(*(crawl_article(entry) for entry in stale))
    progress.close()


def run_markdown_stage(pipeline: Pipeline) -> StageResult:
    """Crawl the article of every stale markdown item; failures write nothing."""
    stale = pipeline.adopt_edits("markdown")
    result = StageResult("markdown", skipped=len(pipeline.rows()) - len(stale))
    if stale:
        with pipeline.finishing("markdown"):
            asyncio.run(_crawl_articles(pipeline, stale, result))
    return result
