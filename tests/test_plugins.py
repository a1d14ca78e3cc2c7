"""Plugins: built-ins, project-local files, the README example, broken and misspelled plugins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pvbuild.builtins.sample import serve_directory
from pvbuild.cli import main
from pvbuild.errors import PluginError
from pvbuild.plugins import forget_plugins, load_plugins
from tests.conftest import ROOT, Project


def plugins_json(project: Project, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["--project", str(project.path), "plugins", *args]) == 0
    listing: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return listing


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Adding a source site", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


NEA_CONFIG = """
[profile.test.sources.nea]
list_url = "{base}/policy/list_{{page}}.html"
last_page = 1
"""


def nea_site(project: Project) -> Path:
    """A one-article site for the README's example crawler."""
    site = project.path / "site"
    (site / "policy").mkdir(parents=True)
    (site / "policy" / "list_1.html").write_text(
        "<html><body><ul class='policy-list'><li><a href='/policy/a1.html'>关于光伏的政策</a>"
        "<span class='date'>2025-09-01</span></li></ul>" + "<p>国家能源局政策列表页。</p>" * 30 + "</body></html>",
        encoding="utf-8")
    (site / "policy" / "a1.html").write_text(
        "<html><body><div class='nav'>导航</div><div class='article-content'><h2>要点</h2>"
        "<p>光伏项目应当配置储能。</p></div></body></html>", encoding="utf-8")
    return site


def test_builtins_are_ordinary_plugins(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    listing = {p["name"]: p for p in plugins_json(project, capsys, "--all")}
    assert listing["sample"]["crawlers"] == ["sample"] and listing["sample"]["source"] == "builtin"
    assert listing["openai_annotator"]["annotators"] == ["openai"]
    assert listing["base_models"]["base_models"] == [
        "llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct", "llama-3.1-8b", "llama-3.1-70b",
        "llama-3.1-70b-instruct", "llama-3.1-405b-fp8", "llama-3.1-405b-instruct-fp8"]
    assert plugins_json(project, capsys) == []  # without --all: only installed and local plugins


def test_readme_example_plugin_is_listed_selected_and_crawled(project: Project,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (project.path / "plugins" / "nea.py").write_text(readme_example(), encoding="utf-8")
    listing = plugins_json(project, capsys)
    assert listing[0]["name"] == "nea" and listing[0]["crawlers"] == ["nea"]
    assert listing[0]["source"] == "local" and str(listing[0]["version"]).startswith("sha256:")
    assert listing[0]["hooks"] == ["register_crawlers"]

    with serve_directory(nea_site(project)) as base:
        project.config(NEA_CONFIG.format(base=base))
        assert project.build() == 0
    markdown = (project.artifacts() / "markdown" / "a1.md").read_text(encoding="utf-8")
    assert "光伏项目应当配置储能" in markdown and "导航" not in markdown
    assert (project.artifacts() / "dataset" / "train.jsonl").is_file()


def test_broken_plugin_is_named_and_does_not_break_other_commands(project: Project,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (project.path / "plugins" / "broken.py").write_text("import pvbuild\nraise RuntimeError('boom')\n")
    (project.path / "plugins" / "nea.py").write_text(readme_example(), encoding="utf-8")
    capsys.readouterr()
    assert main(["--project", str(project.path), "plugins"]) == 0
    captured = capsys.readouterr()
    listing = json.loads(captured.out)
    assert {"name": "broken", "path": "plugins/broken.py", "error": "RuntimeError: boom"} in listing
    assert any(p.get("name") == "nea" and "error" not in p for p in listing)
    assert "plugin 'broken' (plugins/broken.py) failed to load: RuntimeError: boom" in captured.err


def test_strict_plugins_make_a_broken_plugin_fatal(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (project.path / "plugins" / "broken.py").write_text("raise ImportError('no such thing')\n")
    monkeypatch.setenv("PVBUILD_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken.*plugins/broken.py.*no such thing"):
        load_plugins(project.path, fresh=True)
    assert main(["--project", str(project.path), "plugins"]) == 2
    assert "PVBUILD_STRICT_PLUGINS" in capsys.readouterr().err


def test_misspelled_hook_is_rejected(project: Project) -> None:
    (project.path / "plugins" / "typo.py").write_text(
        "import pvbuild\n\n@pvbuild.hookimpl\ndef register_crawler(register):\n    pass\n")
    registry = load_plugins(project.path, fresh=True)
    [failure] = registry.failures
    assert failure.name == "typo" and "unknown hook 'register_crawler'" in failure.reason
    assert "did you mean 'register_crawlers'" in failure.reason


def test_load_plugins_env_restricts_what_loads(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    (project.path / "plugins" / "nea.py").write_text(readme_example(), encoding="utf-8")
    (project.path / "plugins" / "broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.setenv("PVBUILD_LOAD_PLUGINS", "nea")
    registry = load_plugins(project.path, fresh=True)
    assert "nea" in registry.crawlers and registry.failures == []
    monkeypatch.setenv("PVBUILD_LOAD_PLUGINS", "")
    registry = load_plugins(project.path, fresh=True)
    assert "nea" not in registry.crawlers and "sample" in registry.crawlers  # built-ins always load


def test_duplicate_registration_is_reported(project: Project) -> None:
    (project.path / "plugins" / "again.py").write_text(
        "import pvbuild\n\n@pvbuild.hookimpl\ndef register_crawlers(register):\n"
        "    register(pvbuild.CssSite(name='bjx', list_url='x{page}', item_selector='li', article_selector='p'))\n")
    [failure] = load_plugins(project.path, fresh=True).failures
    assert "crawler 'bjx' is already registered by plugin 'bjx'" in failure.reason


def test_local_plugin_version_follows_its_content(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    plugin = tmp_path / "plugins" / "nea.py"
    plugin.write_text(readme_example(), encoding="utf-8")
    first = load_plugins(tmp_path, fresh=True).crawlers["nea"].plugin.version
    plugin.write_text(readme_example() + "\n# changed\n", encoding="utf-8")
    assert load_plugins(tmp_path, fresh=True).crawlers["nea"].plugin.version != first


def test_a_declared_cache_version_decides_what_an_edit_rebuilds(project: Project) -> None:
    from pvbuild.config import load_config
    from pvbuild.engine import staleness
    from pvbuild.engine.workspace import Workspace
    from pvbuild.stages.catalog import stage_named

    plugin = project.path / "plugins" / "nea.py"
    plugin.write_text(readme_example() + '\n__cache_version__ = "1"\n', encoding="utf-8")

    def stale_markdown() -> list[str]:
        forget_plugins()  # as a new process would: load the plugin file again
        workspace = Workspace(load_config(project.path, "test"))
        return [entry.reason for entry in staleness.stale(workspace, stage_named("markdown"))]

    with serve_directory(nea_site(project)) as base:
        project.config(NEA_CONFIG.format(base=base))
        assert project.build() == 0
        plugin.write_text("# A comment, and a patch release: nothing to re-crawl.\n" + plugin.read_text(), "utf-8")
        assert stale_markdown() == []
        plugin.write_text(plugin.read_text().replace('__cache_version__ = "1"', '__cache_version__ = "2"'), "utf-8")
        assert stale_markdown() and all("crawler" in reason or "source" in reason for reason in stale_markdown())


def test_a_cache_version_must_be_a_string(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    (project.path / "plugins" / "nea.py").write_text(readme_example() + "\n__cache_version__ = 2\n", "utf-8")
    listing = plugins_json(project, capsys)
    assert listing == [{"name": "nea", "path": "plugins/nea.py",
                        "error": "PluginError: __cache_version__ must be a non-empty string, not 2"}]
