"""The URL table: safe, stable file ids and the merge rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvbuild.engine.url_table import (
    UrlRow,
    file_id_for,
    merge_urls,
    normalize_date,
    read_digested_urls,
    read_urls,
    row_digest,
    write_urls,
)
from pvbuild.errors import PvbuildError


@pytest.mark.parametrize(("link", "expected"), [
    ("https://guangfu.bjx.com.cn/news/20250801/1455093.shtml", "1455093"),
    ("https://x.cn/a/%E6%94%BF%E7%AD%96 v2.html", "v2"),
    ("https://x.cn/../../etc/passwd", "passwd"),
    ("https://x.cn/a/..", None),
    ("https://x.cn/", None),
])
def test_file_id_is_the_safe_stem(link: str, expected: str | None) -> None:
    file_id = file_id_for(link)
    assert "/" not in file_id and not file_id.startswith(".")
    if expected is None:
        assert file_id.startswith("url-") and file_id == file_id_for(link)  # stable
    else:
        assert file_id == expected


def test_dates_are_normalized() -> None:
    assert normalize_date("2025/8/1") == normalize_date("2025年8月1日") == normalize_date("2025-08-01 10:00")


def row(link: str, date: str, title: str = "t") -> UrlRow:
    return UrlRow(title, link, date, file_id_for(link), "bjx")


def test_merge_dedupes_latest_wins_and_sorts_newest_first() -> None:
    existing = [row("https://a.cn/1/100.shtml", "2025-01-01", "old")]
    merged = merge_urls(existing, [row("https://a.cn/1/100.shtml", "2025-01-01", "new"),
                                   row("https://a.cn/2/200.shtml", "2025-03-01"),
                                   row("https://b.cn/9/100.shtml", "2025-02-01")], ["bjx"])
    assert [r.title for r in merged if r.link.endswith("1/100.shtml")] == ["new"]
    assert [r.date for r in merged] == ["2025-03-01", "2025-02-01", "2025-01-01"]
    ids = [r.file_id for r in merged]
    assert len(set(ids)) == 3 and "100" in ids and any(i.startswith("100-") for i in ids)  # collision renamed


def test_read_urls_names_file_and_row(tmp_path: Path) -> None:
    table = tmp_path / "urls.csv"
    write_urls(table, [row("https://a.cn/1.shtml", "2025-01-01")])
    assert read_urls(table)[0].file_id == "1"
    table.write_text("title,link,date,file_id,source\nt,https://a.cn/x,2025-01-01,../../x,bjx\n")
    with pytest.raises(PvbuildError, match=r"urls.csv:2: file_id '../../x' is not a safe file name"):
        read_urls(table)
    table.write_text("title,link\n")
    with pytest.raises(PvbuildError, match="missing columns date, file_id, source"):
        read_urls(table)


def test_read_urls_takes_columns_by_name_and_counts_lines_as_an_editor_does(tmp_path: Path) -> None:
    table = tmp_path / "urls.csv"
    table.write_text('source,file_id,date,link,title\nbjx,1,2025-01-01,https://a.cn/1.shtml," 标题 "\n\n'
                     "bjx,,2025-01-02,https://a.cn/2.shtml,t\n", encoding="utf-8")
    with pytest.raises(PvbuildError, match=r"urls.csv:4: empty link or file_id"):
        read_urls(table)
    table.write_text(table.read_text(encoding="utf-8").replace(",,", ",2,"), encoding="utf-8")
    assert read_urls(table) == [UrlRow("标题", "https://a.cn/1.shtml", "2025-01-01", "1", "bjx"),
                                UrlRow("t", "https://a.cn/2.shtml", "2025-01-02", "2", "bjx")]


def test_read_urls_a_link_listed_again_takes_its_later_place_and_a_shared_file_id_is_refused(tmp_path: Path) -> None:
    table = tmp_path / "urls.csv"
    table.write_text("title,link,date,file_id,source\n"
                     "old,https://a.cn/1.shtml,2025-01-01,1,bjx\n"
                     "b,https://a.cn/2.shtml,2025-01-02,2,bjx\n"
                     "new,https://a.cn/1.shtml,2025-01-03,1,bjx\n", encoding="utf-8")
    assert [(row.title, row.file_id) for row in read_urls(table)] == [("b", "2"), ("new", "1")]
    with table.open("a", encoding="utf-8") as stream:
        stream.write("c,https://a.cn/3.shtml,2025-01-04,2,bjx\n")
    with pytest.raises(PvbuildError, match=r"urls.csv:5: file_id '2' is also the file_id of line 3 "
                                           r"\(https://a.cn/2.shtml\), another link"):
        read_urls(table)


def test_digested_rows_come_from_the_cache_only_while_the_table_digest_holds(tmp_path: Path) -> None:
    table, cache = tmp_path / "urls.csv", tmp_path / ".pvbuild" / "urls-cache.marshal"
    write_urls(table, [row("https://a.cn/1.shtml", "2025-01-01"), row("https://a.cn/2.shtml", "2025-01-02")])
    parsed = read_digested_urls(table, "digest-1", cache)
    assert [digest for _, digest in parsed] == [row_digest(r) for r in read_urls(table)]
    assert cache.is_file()
    table.write_text("title,link\n")  # unreadable as a table: only the cache can answer now
    assert read_digested_urls(table, "digest-1", cache) == parsed
    with pytest.raises(PvbuildError, match="missing columns"):
        read_digested_urls(table, "digest-2", cache)  # a new digest: parsed again
    cache.write_bytes(b"not marshal")
    write_urls(table, [row("https://a.cn/3.shtml", "2025-01-03")])
    assert [r.file_id for r, _ in read_digested_urls(table, "digest-3", cache)] == ["3"]
    assert read_digested_urls(tmp_path / "missing.csv", None, cache) == []
