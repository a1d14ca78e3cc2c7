"""What git already knows on a fresh clone: the blob id of each tracked file that the working tree still
holds as checked out, so that ``check`` need not read 200,000 files to learn their digests.

``git ls-files --stage`` lists the blob id of every tracked file under the artifact folders, and
``git diff-files`` names those whose working copy differs from the index (git compares the stat
data it recorded at checkout, and reads the file where that cannot decide). A file tracked, in
stage 0, a regular file, not marked assume-unchanged or skip-worktree, and not named by
``diff-files`` has exactly the bytes of its blob, unless git converts it on checkout; so git is
not trusted at all where ``core.autocrlf`` is on, and where any attributes file exists, a file is
trusted only when ``git check-attr`` finds none of ``text``, ``eol``, ``filter``, ``ident`` or
``working-tree-encoding`` set on it. Records of per-article files keep the blob id of what they
recorded (``records.file_output``): a trusted file whose blob id a record names has that record's
digest.

The git processes run while the check reads the URL table and the records; anything that goes
wrong (no git, not a repository, a git error) leaves the files to be read as before.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONVERTING = ("text", "eol", "filter", "ident", "working-tree-encoding")


def _git(root: Path, *args: str, stdin: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["git", "-C", str(root), *args], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})


class GitIndex:
    """Asks git about ``folders`` (paths relative to ``root``) now; ``collect`` parses the answers."""

    def __init__(self, root: Path, folders: Sequence[str]) -> None:
        self.root = root
        self.folders = [folder.rstrip("/") for folder in folders]
        self.processes = [
            _git(root, "ls-files", "--stage", "-v", "-z", "--", *self.folders),
            _git(root, "diff-files", "--name-only", "--relative", "-z", "--", *self.folders),
            _git(root, "config", "--get", "core.autocrlf"),
        ]
        # Their output is read as it comes (18 MB at 100,000 articles): a full pipe would stall git
        # until collect(), and the point is that git works while the check reads the records.
        self.outputs: list[bytes] = [b""] * len(self.processes)
        self.readers = [threading.Thread(target=self._read, args=(index,), daemon=True)
                        for index in range(len(self.processes))]
        for reader in self.readers:
            reader.start()

    def _read(self, index: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.outputs[index] = self.processes[index].communicate()[0]

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                process.kill()
        for reader in self.readers:
            reader.join()

    def collect(self) -> dict[str, str]:
        """Path (relative to ``root``) -> blob id, for every file git vouches for; empty when it cannot."""
        for reader in self.readers:
            reader.join(timeout=120)
        if any(reader.is_alive() for reader in self.readers):
            self.stop()
            return {}
        listed, changed, autocrlf = self.outputs
        if self.processes[0].returncode or self.processes[1].returncode:
            return {}  # not a repository, or git failed: read the files
        if autocrlf.strip().lower() in (b"true", b"1", b"yes", b"on"):
            return {}  # checkout may have converted line endings
        blobs = _blobs(listed)
        for name in changed.split(b"\0"):
            if name:
                blobs.pop(os.fsdecode(name), None)
        if blobs and self._attributes_exist():
            blobs = self._without_conversions(blobs)
        return blobs

    def _attributes_exist(self) -> bool:
        """Whether any attributes file could apply (then each path is asked about)."""
        found = _git(self.root, "ls-files", "-z", "--", ":(glob)**/.gitattributes", ".gitattributes")
        tracked, _ = found.communicate()
        info = _git(self.root, "rev-parse", "--git-path", "info/attributes")
        info_path, _ = info.communicate()
        configured = _git(self.root, "config", "--get", "core.attributesFile")
        user_file, _ = configured.communicate()
        home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "git" / "attributes"
        candidates = [self.root / os.fsdecode(info_path.strip())] if info_path.strip() else []
        candidates += [Path(os.path.expanduser(os.fsdecode(user_file.strip())))] if user_file.strip() else [home]
        return bool(tracked.strip(b"\0")) or any(path.is_file() for path in candidates) \
            or any((self.root / folder / ".gitattributes").is_file() for folder in ("", *self.folders))

    def _without_conversions(self, blobs: dict[str, str]) -> dict[str, str]:
        process = _git(self.root, "check-attr", "-z", "--stdin", *CONVERTING, stdin=True)
        answer, _ = process.communicate(b"\0".join(os.fsencode(name) for name in blobs) + b"\0")
        if process.returncode:
            return {}
        fields = answer.split(b"\0")
        for index in range(0, len(fields) - 2, 3):
            if fields[index + 2] not in (b"unspecified", b"unset"):
                blobs.pop(os.fsdecode(fields[index]), None)
        return blobs


# An ``ls-files --stage -v -z`` entry of a plain tracked regular file in stage 0: tag H (cached; a
# lowercase tag is assume-unchanged and S skip-worktree, files git does not look at), mode, blob, path.
_PLAIN_ENTRY = re.compile("(?:^|\0)H 100(?:644|755) ([0-9a-f]{40}) 0\t([^\0]*)")


def _blobs(listed: bytes) -> dict[str, str]:
    """Path -> blob id of the plain tracked regular files of an ``ls-files --stage -v -z`` listing."""
    text = listed.decode("utf-8", "surrogateescape")  # as os.fsdecode, once for the whole listing
    return {path: blob for blob, path in _PLAIN_ENTRY.findall(text)}


def in_repository(root: Path) -> bool:
    """Whether ``root`` is inside a git working tree (a ``.git`` folder or file above it)."""
    return any((folder / ".git").exists() for folder in (root.resolve(), *root.resolve().parents))


def start(root: Path, folders: Sequence[str]) -> Any:
    """A ``GitIndex`` for ``folders`` of ``root``, or None when git cannot be run."""
    try:
        return GitIndex(root, folders)
    except OSError:
        return None
