"""Writing files so that readers never see half of one, with the modes the user's umask gives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; an artifact gets the mode any other file of the user's would get.
FILE_MODE = 0o666 & ~_current_umask()
DIRECTORY_MODE = 0o777 & ~_current_umask()
# Temporary files and folders pvbuild makes inside the artifact tree end with this: a build killed
# mid-write leaves one behind, and ``prune`` (and ``check``) find it by its name.
TEMP_SUFFIX = ".pvbuild-tmp"


def marshalled(value: Any) -> bytes:
    """``value`` in marshal's version 2, which writes no back-references (any version reads it):
    version 4, the default, looks each object referenced twice up in a table as it writes, which made
    the URL table's cache (100,000 rows whose strings the parsed rows share) 2-3x slower to write."""
    return marshal.dumps(value, 2)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(handle, FILE_MODE)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_directory(built: Path, target: Path) -> None:
    """Put the finished directory ``built`` where ``target`` is, keeping the old one until the new is in place."""
    old = target.with_name(f".{target.name}.old{TEMP_SUFFIX}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(built, target)
    shutil.rmtree(old, ignore_errors=True)


def write_artifact(path: Path, value: Any) -> None:
    """A JSON artifact (marker, record, manifest): sorted keys, one level per line, written atomically."""
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()
