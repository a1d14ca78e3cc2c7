"""Crawling a fixture copy of the reference site on 127.0.0.1 through crawl4ai."""

from __future__ import annotations

import csv

import pytest

from pvbuild.cli import main
from tests.conftest import Project, site_and_llm_config
from tests.standins import FakeOpenAI, FixtureSite


def test_reference_site_gives_url_table_and_markdown(project: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    project.config(site_and_llm_config(site, llm))
    assert project.build() == 1  # the 404 article fails the run, after everything else is built

    with open(project.artifacts() / "urls.csv", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["file_id"] for row in rows] == ["1455200", "1455093", "1455301", "1455400", "1455500"]
    assert [row["date"] for row in rows] == sorted((row["date"] for row in rows), reverse=True)
    assert {row["source"] for row in rows} == {"bjx"}
    # relative and absolute links both end up absolute, and the duplicate link appears once
    assert all(row["link"].startswith(site.url + "/zc/") for row in rows)
    assert rows[2]["link"] == f"{site.url}/zc/20250728/1455301.shtml"

    markdown = project.artifacts() / "markdown"
    assert sorted(p.name for p in markdown.iterdir()) == ["1455093.md", "1455200.md", "1455301.md", "1455500.md"]
    assert "光伏方阵用地不改变地表形态的" in (markdown / "1455301.md").read_text(encoding="utf-8")  # GBK decoded
    text = (markdown / "1455093.md").read_text(encoding="utf-8")
    assert "上半年全国光伏新增并网21200万千瓦" in text and "版权所有" not in text  # only the article body
    assert not (markdown / "1455400.md").exists()  # the 404 is reported, not written
    assert site.requests["/zc/20250720/1455400.shtml"] == 1
    assert not (project.artifacts() / "conversations" / "1455400.csv").exists()


def test_a_404_fails_for_good_until_retry_failed_or_its_row_changes(project: Project, site: FixtureSite,
                                                                    llm: FakeOpenAI,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    project.config(site_and_llm_config(site, llm))
    gone = "/zc/20250720/1455400.shtml"
    assert project.build() == 1
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "failed for good, not retried until its URL row or crawler changes" in err and "1455400" in err
    assert "HTTP 404" in err and site.requests[gone] == 1
    site.pages[1][1].missing = False  # the page comes back, but nothing says so
    assert project.build() == 1 and site.requests[gone] == 1  # not asked again
    assert "failed for good" in capsys.readouterr().err
    assert main(["--project", str(project.path), "build", "--profile", "test", "--retry-failed", "data"]) == 0
    assert site.requests[gone] == 2 and (project.artifacts() / "markdown" / "1455400.md").is_file()
    assert site.requests["/zc/20250801/1455093.shtml"] == 1  # the others were not fetched again


def test_a_404_whose_url_row_changes_is_tried_again(project: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    project.config(site_and_llm_config(site, llm))
    gone = "/zc/20250720/1455400.shtml"
    assert project.build() == 1 and site.requests[gone] == 1
    site.pages[1][1].missing = False
    site.pages[1][1].title = "已恢复的文章"  # the list page shows it again, retitled: its row changes
    (project.artifacts() / "urls.csv").unlink()  # (the list pages are crawled again when the table is gone)
    assert project.build() == 0 and site.requests[gone] == 2


def test_url_table_merges_with_existing_rows(project: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    project.config(site_and_llm_config(site, llm))
    table = project.artifacts() / "urls.csv"
    table.parent.mkdir(parents=True)
    table.write_text("title,link,date,file_id,source\n"
                     f"旧标题,{site.url}/zc/20250801/1455093.shtml,2025-08-01,1455093,bjx\n"
                     "手工加入的文章,https://example.invalid/zc/1.shtml,2024-01-01,1,bjx\n", encoding="utf-8")
    project.build("urls")
    with open(table, encoding="utf-8") as stream:
        rows = {row["file_id"]: row for row in csv.DictReader(stream)}
    assert rows["1455093"]["title"] == "国家能源局发布上半年光伏发电建设情况"  # the latest crawl wins
    assert rows["1"]["title"] == "手工加入的文章"  # existing rows are kept
    assert list(rows)[-1] == "1"  # oldest last


def test_an_excluded_link_is_left_out_of_the_url_table_and_fails_nothing(project: Project, site: FixtureSite,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture site lists one article that answers 404 (1455400): excluded, it stops nothing."""
    config = (f'[profile.test]\nartifacts = "artifacts/test"\n[profile.test.sources.bjx]\n'
              f'list_url = "{site.url}/zc/{{page}}"\nfirst_page = 1\nlast_page = 2\nretries = 0\n')
    project.config(config)
    assert project.build() != 0, "the dead link fails the data half"
    dead = next(line.split(",")[1] for line in (project.artifacts() / "urls.csv").read_text(encoding="utf-8")
                .splitlines() if "1455400" in line)
    project.config(config + f'exclude = ["{dead}"]\n')
    capsys.readouterr()
    assert project.build() == 0
    assert "1455400" not in (project.artifacts() / "urls.csv").read_text(encoding="utf-8")
    assert not (project.artifacts() / "markdown" / "1455400.md").exists()
    assert "1 link(s) left out by sources.<name>.exclude" in capsys.readouterr().err


def test_a_page_robots_txt_disallows_is_not_fetched_and_says_why(project: Project, site: FixtureSite,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    blocked = next(article for article in site.articles() if article.file_id == "1455093")
    site.robots_txt = f"User-agent: *\nDisallow: {blocked.path}\n"
    config = (f'[profile.test]\nartifacts = "artifacts/test"\n[profile.test.sources.bjx]\n'
              f'list_url = "{site.url}/zc/{{page}}"\nfirst_page = 1\nlast_page = 2\nretries = 0\n')
    project.config(config)
    project.build()
    assert site.requests[blocked.path] == 0, "never requested"
    assert not (project.artifacts() / "markdown" / "1455093.md").exists()
    assert (project.artifacts() / "markdown" / "1455200.md").exists(), "the others are crawled"
    assert "1455093" in (err := capsys.readouterr().err) and "disallowed by the site's robots.txt" in err
    project.config(config + "robots_txt = false\n")
    project.build()
    assert (project.artifacts() / "markdown" / "1455093.md").exists() and site.requests[blocked.path] == 1
