"""The ``sample`` source: a bundled site of synthetic PV policy news, in the reference HTML
structure, served on 127.0.0.1 for the run so the default profile crawls for real, offline."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from pvbuild import CssSite, hookimpl
from pvbuild.builtins.bjx import BJX_SELECTORS

__cache_version__ = "0.1.0"  # what this plugin's artifacts depend on: bump it when its output changes

CANONICAL_ROOT = "http://sample.pvbuild.invalid"


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) and yield its base URL."""
    # Imported here: every command loads this plugin, only a crawl serves the site.
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class HtmlHandler(SimpleHTTPRequestHandler):
        """Serves every file as UTF-8 HTML (list pages have no extension, articles end in .shtml)."""

        def guess_type(self, path: Any) -> str:
            return "text/html; charset=utf-8"

        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(HtmlHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="pvbuild-sample-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class SampleSite(CssSite):
    """The bundled site; its canonical links (``sample.pvbuild.invalid``) never change."""

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[Callable[[str], str]]:
        with resources.as_file(resources.files("pvbuild") / "sample_site") as directory, \
                serve_directory(directory) as base:
            yield lambda url: url.replace(CANONICAL_ROOT, base, 1)


@hookimpl
def register_crawlers(register: Callable[[CssSite], None]) -> None:
    register(SampleSite(
        name="sample", list_url=CANONICAL_ROOT + "/zc/{page}", description=(
            "A bundled sample site of 12 synthetic PV policy articles (2 list pages), served on 127.0.0.1"),
        options={"first_page": 1, "last_page": 2}, **BJX_SELECTORS))
