"""Starts the system Chromium (Debian package ``chromium``) headless and exposes its CDP URL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile

from pvbuild.errors import PvbuildError

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
)
_DEVTOOLS = re.compile(rb"DevTools listening on ws://([^/\s]+)/")


def chromium_path() -> str:
    for candidate in (os.environ.get("PVBUILD_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    raise PvbuildError("the browser strategy needs Chromium: install it with `apt-get install -y chromium` "
                       "or set PVBUILD_CHROMIUM to its path (or use strategy = \"http\")")


class Chromium:
    """``async with Chromium() as browser``: a private headless Chromium for one run."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.profile_dir = ""
        self.cdp_url = ""

    async def __aenter__(self) -> Chromium:
        self.profile_dir = tempfile.mkdtemp(prefix="pvbuild-chromium-")
        self.process = await asyncio.create_subprocess_exec(
            chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.process.stderr is not None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = await self.process.stderr.readline()
                    if not line:
                        raise PvbuildError("Chromium exited before it was ready")
                    if match := _DEVTOOLS.search(line):
                        self.cdp_url = f"http://{match.group(1).decode()}"
                        break
        except BaseException:
            await self.__aexit__()
            raise
        # Keep draining stderr so Chromium never blocks on a full pipe.
        self._drain = asyncio.create_task(self.process.stderr.read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                async with asyncio.timeout(10):
                    await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
        shutil.rmtree(self.profile_dir, ignore_errors=True)
