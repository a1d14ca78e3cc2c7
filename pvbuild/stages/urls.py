"""The ``urls`` stage: crawl the list pages of every source into the URL table (``urls.csv``).

New rows merge into the table (one per link, the newest crawl wins, newest first); rows of
sources no longer configured leave it. A hand-edited table is kept (make semantics) until the
sources change, ``refresh_hours`` passes or ``doit -a urls`` forces a crawl.
"""

from __future__ import annotations

import time

from pvbuild.engine import staleness
from pvbuild.engine.outcomes import StageResult
from pvbuild.engine.records import Item
from pvbuild.engine.stage import StageBase, StaleItem
from pvbuild.engine.url_table import merge_urls, read_urls, write_urls
from pvbuild.engine.workspace import Workspace
from pvbuild.files import atomic_write_text


class UrlsStage(StageBase):
    name = "urls"
    doc = "crawl the list pages of every source into the URL table"
    keeps_edits = True

    def items(self, workspace: Workspace) -> list[Item]:
        return [Item("urls", {"sources": workspace.sources_identity()}, str(workspace.urls_csv))]

    def refine(self, workspace: Workspace, items: list[Item], found: list[StaleItem]) -> list[StaleItem]:
        """Beyond the records: the lists are due again after ``refresh_hours``."""
        if found:
            return found
        hours = [float(s.options["refresh_hours"]) for s in workspace.config.sources if s.options["refresh_hours"]]
        if not hours:
            return []
        try:
            age = time.time() - float(workspace.last_list_crawl_file.read_text())
        except (OSError, ValueError):
            age = float("inf")
        if age < min(hours) * 3600:
            return []
        return [StaleItem(items[0], f"lists last crawled {age / 3600:.1f} h ago (refresh_hours)")]

    def run(self, workspace: Workspace) -> StageResult:
        """Crawl every list page and merge the rows into the URL table (a hand-edited table that is
        otherwise up to date is kept as it is)."""
        result = StageResult("urls")
        stale = staleness.stale(workspace, self)
        if stale and not staleness.adopt_edits(workspace, self) and not workspace.forced:
            result.skipped = 1
            return result
        skipped: list[str] = []
        import asyncio

        from pvbuild.stages.sites import crawl_lists

        crawled = asyncio.run(crawl_lists(workspace, result, skipped))
        atomic_write_text(workspace.last_list_crawl_file, str(time.time()))
        if skipped:
            result.notes.append(f"{len(skipped)} non-HTTP link(s) left out (e.g. {skipped[0][:60]})")
        configured = [source.name for source in workspace.config.sources]
        merged = merge_urls(read_urls(workspace.urls_csv), crawled, configured)
        excluded = {link.strip() for source in workspace.config.sources for link in source.options["exclude"]}
        kept = [row for row in merged if row.link not in excluded]
        if len(kept) < len(merged):
            result.notes.append(f"{len(merged) - len(kept)} link(s) left out by sources.<name>.exclude")
        merged = kept
        write_urls(workspace.urls_csv, merged)
        workspace.forget_rows()
        records = workspace.records("urls")
        item = self.items(workspace)[0]
        if result.failures:
            records.drop(item.key)  # some list page failed: crawl the lists again next run
        else:
            records.put(item.key, {"inputs": dict(item.inputs), "output": workspace.hasher.digest(item.file),
                                   "rows": len(merged)})
            result.built = 1
        workspace.finish("urls")
        return result


STAGE = UrlsStage()
