"""``pvbuild publish``: the built dataset and a card from the build records to a Hub stand-in on 127.0.0.1
(``HF_ENDPOINT``), never the internet; a stale dataset is refused; the token never reaches an artifact."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from pvbuild.cli import main
from tests.conftest import Project
from tests.standins import FakeHub

TOKEN = "hf_fake_token_never_in_artifacts"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as running:
        monkeypatch.setenv("HF_ENDPOINT", running.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield running


def test_publish_pushes_the_dataset_and_a_card_from_the_records(project: Project, hub: FakeHub,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    project.config('[profile.test.dataset]\nmix_file = "builtin:general-zh"\n[profile.test.publish]\n'
                   'license = "cc-by-nc-4.0"\n')
    assert project.build() == 0
    capsys.readouterr()
    assert main(["--project", str(project.path), "publish", "--profile", "test", "--hub", "pv/policy-qa"]) == 0
    assert "published to pv/policy-qa (private)" in capsys.readouterr().out
    files = hub.repos["pv/policy-qa"]
    manifest = json.loads((project.artifacts() / "dataset" / "manifest.json").read_text(encoding="utf-8"))
    for name in ("train.jsonl", "train-general.jsonl", "validation.jsonl", "chat.jsonl", "template.json"):
        assert files[name] == (project.artifacts() / "dataset" / name).read_bytes(), name
    assert not any(name.startswith("arrow/") for name in files) and hub.private["pv/policy-qa"] is True
    card = files["README.md"].decode("utf-8")
    assert card.startswith("---\n") and "license: cc-by-nc-4.0" in card and "- zh" in card
    assert "path: train*.jsonl" in card and "path: validation*.jsonl" in card  # the viewer's splits
    assert f"| {manifest['articles']} | {manifest['pairs']} |" in card and "plugin `extractive`" in card
    assert "`sample` (plugin `sample`)" in card and "builtin:general-zh" in card
    assert TOKEN in hub.tokens  # the token went to the Hub, and nowhere else:
    leaked = [p for p in project.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == []


def test_a_stale_dataset_is_not_published(project: Project, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    project.config("[profile.test]\n")
    assert project.build() == 0
    (project.artifacts() / "dataset" / "train.jsonl").write_text("edited\n", encoding="utf-8")
    assert main(["--project", str(project.path), "publish", "--profile", "test", "--hub", "pv/x"]) == 2
    assert "the dataset is not up to date" in capsys.readouterr().err and hub.requests == []


def test_dry_run_writes_the_card_and_sends_nothing(project: Project, hub: FakeHub,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    project.config("[profile.test]\n")
    assert project.build() == 0
    capsys.readouterr()
    assert main(["--project", str(project.path), "publish", "--profile", "test", "--hub", "pv/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would publish" in out and "train.jsonl" in out and hub.requests == []
    assert "Not declared: set publish.license" in (project.path / ".pvbuild" / "test" / "dataset-card.md").read_text(
        encoding="utf-8")


def test_an_unreachable_hub_is_one_clear_error(project: Project, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    project.config("[profile.test]\n")
    assert project.build() == 0
    assert main(["--project", str(project.path), "publish", "--profile", "test", "--hub", "pv/x"]) == 2
    error = capsys.readouterr().err
    assert "publishing to pv/x at http://127.0.0.1:9: ConnectError" in error and "Traceback" not in error
