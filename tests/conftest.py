"""Shared fixtures: a throwaway project directory, the fixture site and the fake OpenAI server."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before torch is imported anywhere: one thread trains the tiny model ~18x faster on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pvbuild.cli import main
from tests.standins import FakeOpenAI, FixtureArticle, FixtureSite

ROOT = Path(__file__).resolve().parent.parent


def reference_pages() -> list[list[FixtureArticle]]:
    """Two list pages: one GBK article, one missing (404) article, one link on both pages."""
    a1 = FixtureArticle("1455093", "国家能源局发布上半年光伏发电建设情况", "2025-08-01",
                        ["上半年全国光伏新增并网21200万千瓦。", "分布式光伏11400万千瓦。"], day="20250801")
    a2 = FixtureArticle("1455200", "分布式光伏管理办法解读", "2025-08-03",
                        ["自然人户用项目由电网企业代为备案。", "一般工商业可选择余电上网。"], day="20250803")
    gbk = FixtureArticle("1455301", "光伏治沙项目用地政策（GBK页面）", "2025-07-28",
                         ["光伏方阵用地不改变地表形态的，按原地类管理。"], day="20250728", gbk=True)
    gone = FixtureArticle("1455400", "已删除的文章", "2025-07-20", ["不会出现。"], day="20250720", missing=True)
    a5 = FixtureArticle("1455500", "绿证全覆盖政策解读", "2025-07-15",
                        ["1个绿证对应1000千瓦时可再生能源电量。"], day="20250715")
    return [[a2, a1, gbk], [gbk, gone, a5]]  # gbk is linked from both pages


@dataclass
class Project:
    """A project directory with dodo.py, a pvbuild.toml and helpers to build and inspect it."""

    path: Path

    def config(self, text: str) -> None:
        (self.path / "pvbuild.toml").write_text(text, encoding="utf-8")

    def build(self, *tasks: str, profile: str = "test") -> int:
        """Build ``tasks``; by default the data half only (up to the ``data`` gate)."""
        return main(["--project", str(self.path), "build", "--profile", profile, *(tasks or ("data",))])

    def build_all(self, profile: str = "test") -> int:
        """The whole chain, through deploy and report."""
        return main(["--project", str(self.path), "build", "--profile", profile, "report"])

    def artifacts(self, profile: str = "test") -> Path:
        return self.path / "artifacts" / profile


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    shutil.copy(ROOT / "dodo.py", tmp_path / "dodo.py")
    (tmp_path / "plugins").mkdir()
    monkeypatch.delenv("PVBUILD_PROFILE", raising=False)
    monkeypatch.delenv("PVBUILD_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("PVBUILD_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("PVBUILD_QUIET", "1")
    cwd = os.getcwd()
    yield Project(tmp_path)
    os.chdir(cwd)
    _stop_endpoints(tmp_path)


def _stop_endpoints(project_dir: Path) -> None:
    """No local endpoint outlives its test, whatever the test did."""
    import json
    import signal

    for record in project_dir.glob("artifacts/*/endpoint.json"):
        pid = json.loads(record.read_text(encoding="utf-8")).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised tiny Llama and its tokenizer (built once per test session)."""
    from tests.models import build_base

    return build_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def site() -> Iterator[FixtureSite]:
    with FixtureSite(reference_pages()) as running:
        yield running


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-key-0123456789")
    with FakeOpenAI() as running:
        yield running


def site_and_llm_config(site: FixtureSite, llm: FakeOpenAI, extra: str = "") -> str:
    return f"""
[profile.test]
artifacts = "artifacts/test"
[profile.test.sources.bjx]
list_url = "{site.url}/zc/{{page}}"
first_page = 1
last_page = 2
retries = 0
[profile.test.annotator]
plugin = "openai"
model = "gpt-4o"
base_url = "{llm.url}/v1"
retry_base_delay = 0.01
max_retries = 3
{extra}
"""
