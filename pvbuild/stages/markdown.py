"""The ``markdown`` stage: crawl each new or changed article into ``markdown/<file_id>.md``.

An article's markdown is built from its URL row and its source's crawler (plugin, version, article
selector, strategy). A failed article writes nothing and is retried next run, except a page that is
gone (HTTP 404, 410): that failure stands, without a request, until the article's row or crawler
changes or ``pvbuild build --retry-failed``. A hand-edited markdown is kept and its conversation
rebuilt from it.
"""

from __future__ import annotations

from typing import ClassVar

from pvbuild.config import SourceConfig
from pvbuild.engine import staleness
from pvbuild.engine.outcomes import StageResult, permanent_failures
from pvbuild.engine.records import Item
from pvbuild.engine.stage import ArticleStage, Fingerprint
from pvbuild.engine.summaries import ItemColumns
from pvbuild.engine.url_table import UrlRow
from pvbuild.engine.workspace import Workspace


def crawler_identity(workspace: Workspace, source: SourceConfig) -> str:
    """What decides an article's markdown besides its row: the plugin, its version, selector and strategy."""
    site = workspace.config.registry.crawlers[source.plugin].item
    return workspace.identity(workspace.plugin_identity("crawlers", source.plugin) | {
        "article_selector": site.article_selector, "strategy": source.options["strategy"]})


class MarkdownStage(ArticleStage):
    name = "markdown"
    writes: ClassVar[tuple[str, ...] | None] = ("markdown/*",)
    doc = "crawl each new or changed article into markdown"
    keeps_edits = True

    def article_items(self, workspace: Workspace, rows: list[UrlRow]) -> list[Item]:
        crawlers = {source.name: crawler_identity(workspace, source) for source in workspace.config.sources}
        digests, path = workspace.row_digests, workspace.markdown_file
        return [Item(row.file_id, {"row": digests[row.file_id], "crawler": crawlers[row.source]},
                     path(row.file_id)) for row in rows]

    def fingerprint(self, workspace: Workspace) -> Fingerprint:
        """The crawlers; per article its row's digest and its markdown's."""
        crawlers = {source.name: crawler_identity(workspace, source) for source in workspace.config.sources}
        keys, rows = self.keys_and_rows(workspace)
        markdowns = workspace.hasher.digests([workspace.markdown_file(key) for key in keys])
        # The items (article_items), as columns: every article, its markdown file the output.
        sources = [crawlers[row.source] for row in workspace.rows()]
        items = ItemColumns(keys, {"row": rows, "crawler": sources}, markdowns)
        return Fingerprint([crawlers], keys, [rows, markdowns], len(keys), items)

    def file(self, workspace: Workspace, key: str) -> str:
        return workspace.markdown_file(key)

    def run(self, workspace: Workspace) -> StageResult:
        """Crawl the article of every stale markdown item; failures write nothing."""
        stale = staleness.adopt_edits(workspace, self)
        result = StageResult("markdown", skipped=len(workspace.rows()) - len(stale))
        gone = permanent_failures(workspace.config.cache_dir, self.name)
        for entry in [entry for entry in stale if entry.item.key in gone]:
            if gone[entry.item.key].inputs == dict(entry.item.inputs):  # same row, same crawler: gone still
                result.failures.append(gone[entry.item.key])
                stale.remove(entry)
        if stale:
            with workspace.finishing("markdown"):
                import asyncio

                from pvbuild.stages.sites import crawl_articles

                asyncio.run(crawl_articles(workspace, stale, result))
        return result


STAGE = MarkdownStage()
