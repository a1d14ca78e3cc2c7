"""The ``bjx`` source: 北极星光伏网 policy news (https://guangfu.bjx.com.cn/zc/{page})."""

from __future__ import annotations

from collections.abc import Callable

from pvbuild import CssSite, hookimpl

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

BJX_SELECTORS = {
    "item_selector": "div.cc-layout-3 .box .center li",
    "title_selector": "a",
    "link_selector": "a",
    "date_selector": "span",
    "article_selector": ".cc-article div#article_cont",
}


@hookimpl
def register_crawlers(register: Callable[[CssSite], None]) -> None:
    register(CssSite(
        name="bjx", list_url="https://guangfu.bjx.com.cn/zc/{page}",
        description="北极星光伏网 policy news, list pages 1..6 by default",
        options={"first_page": 1, "last_page": 6}, **BJX_SELECTORS))
