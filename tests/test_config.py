"""Configuration: profiles, validation messages that name the file and key."""

from __future__ import annotations

import pytest

from pvbuild.config import load_config
from pvbuild.errors import ConfigError
from tests.conftest import Project


def test_default_profile_works_without_any_config(project: Project) -> None:
    config = load_config(project.path)
    assert config.profile == "default" and [s.name for s in config.sources] == ["sample"]
    assert config.annotator.plugin == "extractive" and config.artifacts == project.path / "artifacts" / "default"


def test_production_profile_is_the_reference_pipeline(project: Project) -> None:
    config = load_config(project.path, "production")
    [bjx] = config.sources
    assert (bjx.plugin, bjx.options["first_page"], bjx.options["last_page"]) == ("bjx", 1, 6)
    assert config.annotator.plugin == "openai" and config.annotator.options["model"] == "gpt-4o"


def test_profile_from_environment(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVBUILD_PROFILE", "production")
    assert load_config(project.path).profile == "production"


@pytest.mark.parametrize(("toml", "message"), [
    ('[profile.default.annotator]\nplugin = "opnai"',
     "pvbuild.toml: profile.default.annotator.plugin: unknown annotator 'opnai' (did you mean 'openai'?); "
     "available: extractive, openai"),
    ('[profile.default.sources.x]\nplugin = "nope"', "unknown crawler 'nope'; available: bjx, sample"),
    ('[profile.default.sources.sample]\nlast_page = "six"',
     "pvbuild.toml: profile.default.sources.sample.last_page: expected int, got 'six'"),
    ('[profile.default.sources.sample]\nstrategy = "curl"', "sources.sample.strategy: must be one of http, browser"),
    ('[profile.default.annotator]\nplugin = "openai"\ntemprature = 0.2',
     "annotator.temprature: unknown option (did you mean 'temperature'?)"),
    ('[profile.default.annotator]\nplugin = "openai"\napi_key = "sk-1"', "secrets do not belong in configuration"),
    ('[profile.default.dataset]\nformat = "alpaca"', "dataset.format: must be one of instruction, chat"),
    ('[profile.default.dataset]\nvalidation_ratio = 1.5', "dataset.validation_ratio: must be at least 0"),
    ('[profile.default]\nartifact = "x"', "profile.default.artifact: unknown section (did you mean 'artifacts'?)"),
    ('[profile.default]\nartifacts = "../elsewhere"', "artifacts: must be a relative path inside the project"),
    ("[profile.default\n", "pvbuild.toml: invalid TOML"),
    ('[profile.default.training]\ngpus = 0', 'training.gpus: must be "auto" (every visible GPU) or a whole number'),
    ('[profile.default.training]\ngpus = "two"', "training.gpus: must be"),
    ('[profile.default.training]\ncompile = "yes"', 'training.compile: must be true, false or "auto"'),
    ('[profile.default.training]\nspot = true\nmax_runtime_seconds = 3600\nmax_wait_seconds = 600',
     "training.max_wait_seconds: must be at least max_runtime_seconds"),
    ('[profile.default.sources.sample]\nexclude = ["http://a.example/1.html", 3]',
     "sources.sample.exclude: must be a list of links (strings)"),
    ('[profile.default.dataset]\nmax_failed = 1.5', "dataset.max_failed: must be a count (0, 1, 2, ...) or a ratio"),
    ('[profile.default.dataset]\nmax_failed = true', "dataset.max_failed: expected int, got True"),
    ('[profile.default.endpoint]\nidle_hours = -1.0', "endpoint.idle_hours: must be 0 (never) or more hours"),
    ('[profile.default.training]\nlong_prompts = "cut"',
     "training.long_prompts: unknown way to treat prompts longer than max_input_length 'cut'"),
])
def test_errors_name_file_and_key(project: Project, toml: str, message: str) -> None:
    project.config(toml)
    with pytest.raises(ConfigError) as raised:
        load_config(project.path)
    assert message in str(raised.value)


def test_unknown_profile_lists_profiles(project: Project) -> None:
    with pytest.raises(ConfigError, match="unknown profile 'prod'; profiles: compare, default, production"):
        load_config(project.path, "prod")


def test_pyproject_tool_section_is_read(project: Project) -> None:
    (project.path / "pyproject.toml").write_text('[tool.pvbuild.profile.default.sources.sample]\nlast_page = 1\n')
    assert load_config(project.path).sources[0].options["last_page"] == 1


def test_prompt_file_is_read_relative_to_the_project(project: Project) -> None:
    (project.path / "my-prompt.txt").write_text("自定义提示词", encoding="utf-8")
    project.config('[profile.default.annotator]\nplugin = "openai"\nprompt_file = "my-prompt.txt"')
    assert load_config(project.path).annotator.options["prompt"] == "自定义提示词"
    project.config('[profile.default.annotator]\nplugin = "openai"\nprompt_file = "missing.txt"')
    with pytest.raises(ConfigError, match="annotator.prompt_file: file not found: missing.txt"):
        load_config(project.path)
