"""The crawling the two crawl stages do: each source's site served for the run, one fetcher per run,
list pages into URL rows (``urls``) and articles into markdown (``markdown``). Imported only when a
crawl runs: it brings asyncio and crawl4ai."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from pvbuild.config import SourceConfig
from pvbuild.engine.outcomes import Failure, StageResult
from pvbuild.engine.records import file_output
from pvbuild.engine.stage import StaleItem
from pvbuild.engine.url_table import UrlRow, file_id_for, is_web_link, normalize_date
from pvbuild.engine.workspace import Workspace
from pvbuild.fetch import Fetched, PageFetcher
from pvbuild.plugin_types import CssSite
from pvbuild.progress import Progress

UrlMap = Callable[[str], str]


def list_schema(site: CssSite) -> dict[str, Any]:
    """The crawl4ai ``JsonCssExtractionStrategy`` schema of a site's list pages."""
    return {"name": site.name, "baseSelector": site.item_selector, "fields": [
        {"name": "title", "selector": site.title_selector, "type": "text"},
        {"name": "link", "selector": site.link_selector, "type": "attribute", "attribute": "href"},
        {"name": "date", "selector": site.date_selector, "type": "text"},
    ]}


def crawl4ai_home(workspace: Workspace) -> str:
    home = workspace.config.cache_dir / "crawl4ai"
    home.mkdir(parents=True, exist_ok=True)
    return str(home)


def site_of(workspace: Workspace, source: SourceConfig) -> CssSite:
    return workspace.config.registry.crawlers[source.plugin].item


async def open_sites(stack: contextlib.AsyncExitStack, workspace: Workspace,
                sources: list[SourceConfig]) -> tuple[dict[str, UrlMap], PageFetcher]:
    """Serve each source's site for the run and open the run's single fetcher."""
    maps = {source.name: await stack.enter_async_context(site_of(workspace, source).serve()) for source in sources}
    concurrency = max(int(source.options["concurrency"]) for source in sources)
    fetcher = await stack.enter_async_context(PageFetcher(concurrency, crawl4ai_home(workspace)))
    return maps, fetcher


def rows_from_list_page(page: Fetched, canonical_url: str, source: SourceConfig,
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


async def crawl_lists(workspace: Workspace, result: StageResult, skipped: list[str]) -> list[UrlRow]:
    sources = list(workspace.config.sources)
    pages = [(source, url) for source in sources for url in site_of(workspace, source).list_urls(source.options)]
    progress = Progress("urls", len(pages))
    async with contextlib.AsyncExitStack() as stack:
        maps, fetcher = await open_sites(stack, workspace, sources)

        async def crawl_page(source: SourceConfig, url: str) -> list[UrlRow]:
            site = site_of(workspace, source)
            page = await fetcher.fetch(maps[source.name](url), source.options, schema=list_schema(site))
            rows = rows_from_list_page(page, url, source, skipped) if page.ok else []
            if not rows:
                why = page.error if not page.ok else f"no items matched {site.item_selector!r}"
                result.failures.append(Failure(f"{source.name} list page", url, why or "fetch failed"))
            progress.advance(bool(rows))
            return rows

        found = await asyncio.gather(*(crawl_page(source, url) for source, url in pages))
    progress.close()
    return [row for rows in found for row in rows]


GONE = frozenset({404, 410})  # the page is not there: asking again gives the same until something changes


async def crawl_articles(workspace: Workspace, stale: list[StaleItem], result: StageResult) -> None:
    rows = {row.file_id: row for row in workspace.rows()}
    records = workspace.records("markdown")
    progress = Progress("markdown", len(stale))
    sources = [workspace.source(name) for name in sorted({rows[entry.item.key].source for entry in stale})]
    async with contextlib.AsyncExitStack() as stack:
        maps, fetcher = await open_sites(stack, workspace, sources)

        async def crawl_article(entry: StaleItem) -> None:
            row = rows[entry.item.key]
            source = workspace.source(row.source)
            site = site_of(workspace, source)
            page = await fetcher.fetch(maps[row.source](row.link), source.options, css_selector=site.article_selector)
            markdown = page.markdown.strip()
            if not page.ok:
                gone = page.status in GONE
                result.failures.append(Failure(row.file_id, row.link, page.error or f"HTTP {page.status}",
                                               permanent=gone, inputs=dict(entry.item.inputs) if gone else None))
            elif not markdown:
                result.failures.append(Failure(row.file_id, row.link,
                                               f"the article selector {site.article_selector!r} matched nothing"))
            else:
                data = (markdown + "\n").encode("utf-8")
                workspace.write_output(entry.item.file, data)
                records.put(row.file_id, {"inputs": dict(entry.item.inputs), **file_output(data), "url": row.link})
                result.built += 1
            progress.advance(page.ok and bool(markdown))

        await asyncio.gather(*(crawl_article(entry) for entry in stale))
    progress.close()
