"""Fetching pages with crawl4ai: one crawler per strategy for the whole run, many pages at once.

Concurrency is bounded globally and per host, with a minimum delay between request starts
to the same host (politeness). The HTTP strategy needs no browser; the browser strategy
drives the Debian Chromium over CDP, because Playwright's own browser download does not
work everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from pvbuild.browser import Chromium

_STATUS_IN_ERROR = re.compile(r"HTTP (\d{3})")
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Fetched:
    """What one fetch gave: the HTTP status (None when no response), markdown, extraction, error."""

    url: str
    status: int | None
    markdown: str
    extracted: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _HostLimiter:
    def __init__(self, concurrency: int, delay: float) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.delay = delay
        self.lock = asyncio.Lock()
        self.next_start = 0.0

    @contextlib.asynccontextmanager
    async def slot(self) -> Any:
        async with self.slots:
            async with self.lock:
                loop = asyncio.get_running_loop()
                wait = self.next_start - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.next_start = loop.time() + self.delay
            yield


DISALLOWED = ("disallowed by the site's robots.txt; leave it out (sources.<name>.exclude) or, with the owner's "
              "leave, set sources.<name>.robots_txt = false")


def _read_robots(url: str, timeout: float) -> RobotFileParser | None:
    """The rules at ``url``, or None (allow everything) when there are none or they cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            text = reply.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):  # 404, refused, timed out, not http
        return None
    rules = RobotFileParser(url)
    rules.parse(text.splitlines())
    return rules


@functools.cache
def _run_config_class() -> Any:
    """crawl4ai's ``CrawlerRunConfig``, minus a cost: its ``__setattr__`` inspects ``__init__``'s
    signature (100-odd parameters) on every attribute set, ~2 ms each, and ``arun`` sets some per
    page. Only deprecated names (its ``_UNWANTED_PROPS``) need that check, so only they go through
    it. Nothing of crawl4ai is changed: a subclass reads that table, and where a version has none
    the class is used as it is (slower, still right)."""
    from crawl4ai import CrawlerRunConfig

    deprecated = getattr(CrawlerRunConfig, "_UNWANTED_PROPS", None)
    if not isinstance(deprecated, Mapping | frozenset | set | tuple | list):
        return CrawlerRunConfig
    checked = frozenset(deprecated)

    class RunConfig(CrawlerRunConfig):
        """A ``CrawlerRunConfig`` whose attribute sets cost a dict store."""

        def __setattr__(self, name: str, value: Any) -> None:
            if name in checked:
                super().__setattr__(name, value)
            else:
                object.__setattr__(self, name, value)

    return RunConfig


def _logger(base_directory: str | None) -> Any:
    """crawl4ai's logger at WARNING, to its usual file: at its default level it opens that file
    three times per page to log progress, which pvbuild reports itself."""
    from crawl4ai.async_logger import AsyncLogger, LogLevel

    log_file = os.path.join(base_directory, ".crawl4ai", "crawler.log") if base_directory else None
    return AsyncLogger(log_file=log_file, log_level=LogLevel.WARNING, verbose=False)


class PageFetcher:
    """Fetches pages through crawl4ai; use as ``async with PageFetcher(concurrency) as fetcher``."""

    def __init__(self, concurrency: int, base_directory: str | None = None) -> None:
        self.concurrency = concurrency
        self.global_slots = asyncio.Semaphore(concurrency)
        self.base_directory = base_directory
        self.crawlers: dict[str, Any] = {}
        self.hosts: dict[str, _HostLimiter] = {}
        self.run_configs: dict[str, Any] = {}
        self.robots: dict[str, RobotFileParser | None] = {}  # by scheme://host; None: no rules
        self.robots_lock = asyncio.Lock()
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> PageFetcher:
        await self.stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.__aexit__(*exc)  # type: ignore[arg-type]

    async def _crawler(self, strategy: str) -> Any:
        if strategy not in self.crawlers:
            from crawl4ai import AsyncWebCrawler, BrowserConfig
            from crawl4ai.async_configs import HTTPCrawlerConfig
            from crawl4ai.async_crawler_strategy import AsyncHTTPCrawlerStrategy

            extra: dict[str, Any] = {"logger": _logger(self.base_directory)}
            if self.base_directory:
                extra["base_directory"] = self.base_directory
            if strategy == "http":
                # crawl4ai caps its connection pool at 4 per CPU core; pvbuild's own limits decide.
                http = AsyncHTTPCrawlerStrategy(browser_config=HTTPCrawlerConfig(), max_connections=self.concurrency)
                crawler = AsyncWebCrawler(crawler_strategy=http, config=BrowserConfig(verbose=False), **extra)
            else:
                chromium = await self.stack.enter_async_context(Chromium())
                config = BrowserConfig(browser_mode="cdp", cdp_url=chromium.cdp_url, verbose=False)
                crawler = AsyncWebCrawler(config=config, **extra)
            self.crawlers[strategy] = await self.stack.enter_async_context(crawler)
        return self.crawlers[strategy]

    def _host(self, url: str, options: Mapping[str, Any]) -> _HostLimiter:
        host = urlsplit(url).netloc
        if host not in self.hosts:
            self.hosts[host] = _HostLimiter(int(options["per_host_concurrency"]), float(options["delay"]))
        return self.hosts[host]

    async def fetch(self, url: str, options: Mapping[str, Any], *, css_selector: str | None = None,
                    schema: Mapping[str, Any] | None = None) -> Fetched:
        """Fetch ``url`` with retries on timeouts, connection errors, 429 and 5xx."""
        attempts = int(options["retries"]) + 1
        if options.get("robots_txt", True) and not await self._allowed(url, options):
            return Fetched(url, None, "", None, DISALLOWED)
        result = Fetched(url, None, "", None, "not fetched")
        for attempt in range(attempts):
            async with self.global_slots, self._host(url, options).slot():
                result = await self._fetch_once(url, options, css_selector, schema)
            retryable = result.status is None or result.status in RETRYABLE_STATUS
            if result.ok or not retryable or attempt == attempts - 1:
                return result
            await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
        return result

    async def _allowed(self, url: str, options: Mapping[str, Any]) -> bool:
        """Whether the host's robots.txt lets any agent fetch ``url``. It is read once per host per run
        (stdlib ``urllib.robotparser``): crawl4ai's own per-URL check halved the crawl's throughput
        (bench_crawl.py, 200 pages: 5.7 s against 3.0 s). A robots.txt that is missing or cannot be
        read allows everything, as crawlers commonly treat it."""
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.netloc}"
        async with self.robots_lock:
            if host not in self.robots:
                self.robots[host] = await asyncio.to_thread(_read_robots, f"{host}/robots.txt",
                                                            float(options["timeout"]))
        rules = self.robots[host]
        return rules is None or rules.can_fetch("*", url)

    def _run_config(self, options: Mapping[str, Any], css_selector: str | None,
                    schema: Mapping[str, Any] | None) -> Any:
        """One ``CrawlerRunConfig`` per distinct setting, shared by its pages as ``arun_many`` shares
        one: building one costs ~30 ms of CPU (each attribute set inspects ``__init__``'s signature),
        more than crawl4ai's whole processing of a page."""
        timeout_ms = int(float(options["timeout"]) * 1000)
        key = json.dumps([css_selector, schema, timeout_ms], sort_keys=True)
        if key not in self.run_configs:
            from crawl4ai import CacheMode, JsonCssExtractionStrategy

            self.run_configs[key] = _run_config_class()(
                cache_mode=CacheMode.BYPASS, verbose=False, css_selector=css_selector, page_timeout=timeout_ms,
                extraction_strategy=JsonCssExtractionStrategy(dict(schema)) if schema else None)
        return self.run_configs[key]

    async def _fetch_once(self, url: str, options: Mapping[str, Any], css_selector: str | None,
                          schema: Mapping[str, Any] | None) -> Fetched:
        run = self._run_config(options, css_selector, schema)
        crawler = await self._crawler(str(options["strategy"]))
        try:
            raw = await crawler.arun(url, config=run)
        except Exception as error:  # noqa: BLE001 - crawl4ai raises many kinds; all are a failed fetch
            return Fetched(url, None, "", None, f"{type(error).__name__}: {error}")
        status = raw.status_code
        if status is None:
            match = _STATUS_IN_ERROR.search(raw.error_message or "")
            status = int(match.group(1)) if match else None
        reason: str | None = None
        if status is not None and not 200 <= status < 300:
            reason = f"HTTP {status}"  # crawl4ai's own message for this is a long traceback
        elif not raw.success:
            reason = (raw.error_message or "crawl failed").strip().splitlines()[0]
        markdown = str(raw.markdown or "") if raw.markdown is not None else ""
        return Fetched(url, status, markdown, raw.extracted_content, reason)
