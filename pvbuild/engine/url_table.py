"""The URL table: one row per article, merged across crawls, with stable, safe file ids."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import marshal
import operator
import re
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from pathlib import Path, PurePosixPath
from typing import NamedTuple, NoReturn
from urllib.parse import unquote, urlsplit

from pvbuild.engine.records import digest_bytes
from pvbuild.errors import PvbuildError
from pvbuild.files import atomic_write_bytes, atomic_write_text, marshalled

COLUMNS = ("title", "link", "date", "file_id", "source")
_UNSAFE = re.compile(r"[^0-9A-Za-z_.-]+")
_SAFE_ID = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z_.-]{0,120}")
_DATE = re.compile(r"(\d{4})\D{1,3}(\d{1,2})\D{1,3}(\d{1,2})")


class UrlRow(NamedTuple):
    """One article of the URL table (a named tuple: 10,000 are read at every check)."""

    title: str
    link: str
    date: str
    file_id: str
    source: str


def normalize_date(text: str) -> str:
    """``2025/8/1``, ``2025年8月1日`` and ``2025-08-01 10:00`` all become ``2025-08-01``."""
    match = _DATE.search(text)
    if not match:
        return text.strip()
    year, month, day = match.groups()
    return f"{year}-{int(month):02d}-{int(day):02d}"


def file_id_for(link: str) -> str:
    """The stem of the link's path, made safe as a file name (no separators, no leading dots)."""
    stem = PurePosixPath(unquote(urlsplit(link).path)).stem
    safe = _UNSAFE.sub("_", stem).lstrip(".")[:100].strip("_")
    return safe or "url-" + hashlib.sha256(link.encode("utf-8")).hexdigest()[:12]


def read_urls(path: Path, text: str | None = None) -> list[UrlRow]:
    """Read the URL table (``text``: its contents, already read), naming the file and row of anything
    malformed.

    A link listed twice is one article: the later row wins (as a newer crawl does). Two links
    with one ``file_id`` would write one file, and a row without a source would never be built:
    both are errors naming the lines. The loop does the least per row (a fresh clone's check parses
    100,000 rows): a row is looked at closely only when something in it is wrong."""
    if text is None and not path.is_file():
        return []
    by_link: dict[str, UrlRow] = {}
    with io.StringIO(text, newline="") if text is not None else path.open(encoding="utf-8", newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader, [])
        missing = set(COLUMNS) - set(header)
        if missing:
            raise PvbuildError(f"{path}: missing columns {', '.join(sorted(missing))}; "
                               f"the header must be {','.join(COLUMNS)}")
        width, pick = len(header), operator.itemgetter(*[header.index(column) for column in COLUMNS])
        # tuple.__new__, not UrlRow._make: ``pick`` always gives the five fields, and _make's checks are
        # a Python call per row.
        new, strip, safe = tuple.__new__, str.strip, _SAFE_ID.fullmatch
        for raw in reader:
            if len(raw) < width:
                if not raw:
                    continue  # a blank line, as csv.DictReader skips it
                raw += [""] * (width - len(raw))
            row: UrlRow = new(UrlRow, map(strip, pick(raw)))
            if not (row.link and row.file_id and row.source and safe(row.file_id)):
                _refuse_row(f"{path}:{reader.line_num}", row)
            if row.link in by_link:
                del by_link[row.link]  # inserted again: the later row keeps the later position
            by_link[row.link] = row
    rows = list(by_link.values())  # in line order: each row went in after every earlier one
    if len({row.file_id for row in rows}) != len(rows):
        _refuse_shared_file_ids(path, text, rows)
    return rows


def _refuse_row(where: str, row: UrlRow) -> NoReturn:
    if not row.link or not row.file_id:
        raise PvbuildError(f"{where}: empty link or file_id; fix or delete that row")
    if not row.source:
        raise PvbuildError(f"{where}: empty source; name the configured source the row belongs to")
    raise PvbuildError(f"{where}: file_id {row.file_id!r} is not a safe file name; "
                       "use letters, digits, '_', '-' and '.'")


def _refuse_shared_file_ids(path: Path, text: str | None, rows: list[UrlRow]) -> None:
    owners: dict[str, UrlRow] = {}
    for row in rows:
        other = owners.setdefault(row.file_id, row)
        if other is not row:
            # Each link's last row: a link listed twice is its later row.
            line, first = (line_of(path, functools.partial(_has_link, link), text, last=True)
                           for link in (row.link, other.link))
            raise PvbuildError(f"{path}:{line}: file_id {row.file_id!r} is also the file_id of line {first} "
                               f"({other.link}), another link; give one of them another file_id")


def _has_link(link: str, row: UrlRow) -> bool:
    return row.link == link


def line_of(path: Path, matches: Callable[[UrlRow], bool], text: str | None = None, last: bool = False) -> int:
    """The line number of the first (or ``last``) row that ``matches``, for error messages (``text``: the
    file's contents, already read), or 0."""
    found = 0
    with io.StringIO(text, newline="") if text is not None else path.open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        for raw in reader:
            row = UrlRow(*[(raw.get(column) or "").strip() for column in COLUMNS])
            if matches(row):
                found = reader.line_num
                if not last:
                    break
    return found


def is_web_link(link: str) -> bool:
    """Only http(s) links are articles; ``javascript:``, ``mailto:`` and the like are not."""
    return urlsplit(link).scheme in ("http", "https")


def row_digest(row: UrlRow) -> str:
    """What an article's markdown is built from in its row (the file_id says where it goes, not what it holds):
    ``strings_digest([title, link, date, source])``, its bytes built inline (``_digested``: once per row)."""
    return _digested([row])[0][1]


DigestedRows = list[tuple[tuple[str, ...], str]]  # each row's fields and its row_digest (marshal-able)


def read_digested_urls(path: Path, table_digest: str | None, cache_file: Path,
                       parsed: tuple[str, DigestedRows] | None = None) -> list[tuple[UrlRow, str]]:
    """The table's rows, each with its ``row_digest``, kept in a machine-local cache for as long as the
    table's digest holds: parsing and hashing 10,000 rows cost a sixth of a no-op doit. ``parsed``: the
    table's digest and rows as ``parse_digested`` found them elsewhere, taken when the digest holds."""
    if table_digest is None:
        return []
    with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
        cached_digest, cached_rows = marshal.loads(cache_file.read_bytes())
        if cached_digest == table_digest:
            return [(UrlRow._make(fields), digest) for fields, digest in cached_rows]
    if parsed is not None and parsed[0] == table_digest:
        rows = [(UrlRow._make(fields), digest) for fields, digest in parsed[1]]
    else:
        rows = _digested(read_urls(path, path.read_bytes().decode("utf-8")))
    with contextlib.suppress(OSError):  # a cache: not being able to write it costs time, not correctness
        atomic_write_bytes(cache_file, marshalled((table_digest, _plain(rows))))
    return rows


def parse_digested(path: Path) -> tuple[str, DigestedRows]:
    """The table file's digest and its rows with their ``row_digest``, from one reading of the file."""
    data = path.read_bytes()
    return digest_bytes(data), _plain(_digested(read_urls(path, data.decode("utf-8"))))


def _digested(rows: list[UrlRow]) -> list[tuple[UrlRow, str]]:
    """Each row with its ``row_digest`` (computed here, inline: 100,000 rows on a fresh clone)."""
    fields, encode, sha256 = operator.itemgetter(0, 1, 2, 4), encode_basestring, hashlib.sha256
    return [(row, sha256(("[" + ",".join(map(encode, fields(row))) + "]").encode("utf-8")).hexdigest()[:32])
            for row in rows]


def _plain(rows: list[tuple[UrlRow, str]]) -> DigestedRows:
    """The rows as plain tuples, which marshal takes (named tuples it does not)."""
    return [(tuple(row), digest) for row, digest in rows]


def format_urls(rows: Iterable[UrlRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row._asdict())
    return buffer.getvalue()


def write_urls(path: Path, rows: Iterable[UrlRow]) -> None:
    atomic_write_text(path, format_urls(rows))


def merge_urls(existing: list[UrlRow], crawled: Iterable[UrlRow], sources: Iterable[str]) -> list[UrlRow]:
    """Merge new rows into the table: one row per link (the newest crawl wins, keeping its
    file_id), file ids unique, sorted by date, newest first (ties by link). Rows of sources no
    longer configured leave the table (``prune`` then removes their files)."""
    configured = set(sources)
    by_link = {row.link: row for row in existing if row.source in configured}
    taken = {row.file_id: row.link for row in existing}
    for row in crawled:
        old = by_link.get(row.link)
        if old is not None:
            by_link[row.link] = row._replace(file_id=old.file_id)
            continue
        file_id = row.file_id
        if taken.get(file_id, row.link) != row.link:
            file_id = f"{file_id}-{hashlib.sha256(row.link.encode('utf-8')).hexdigest()[:8]}"
        taken[file_id] = row.link
        by_link[row.link] = row._replace(file_id=file_id)
    ordered = sorted(by_link.values(), key=lambda row: row.link)
    return sorted(ordered, key=lambda row: normalize_date(row.date), reverse=True)
