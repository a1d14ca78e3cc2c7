"""engine.workspace: what a stage's finish and the end of a run leave in identities.json, failures included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pvbuild.config import load_config
from pvbuild.engine.workspace import Workspace

LANDED = Path(__file__).resolve().parent / "fixtures" / "landed-0.1" / "artifacts"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PVBUILD_QUIET", "1")
    monkeypatch.delenv("PVBUILD_PROFILE", raising=False)
    shutil.copytree(LANDED, tmp_path / "artifacts")
    return tmp_path / "artifacts" / "default" / ".state"


def identities(state: Path) -> dict[str, object]:
    found: dict[str, object] = json.loads((state / "identities.json").read_text(encoding="utf-8"))
    return found


def test_a_failure_at_the_commit_leaves_the_identities_saved_and_the_journal_to_replay(state: Path) -> None:
    """Found by the differential soak (seed 14104): a run killed after the stage's records were committed
    and before identities.json was saved lost which identity the records gave up, and the file kept it."""
    workspace = Workspace(load_config(state.parent.parent.parent), live=False)
    records = workspace.records("markdown")
    old = {record["inputs"]["crawler"] for record in records.records.values()}
    assert len(old) == 1 and old <= identities(state).keys()
    new = workspace.identity({"plugin": "sample", "version": "a later one"})
    for key, record in list(records.records.items()):  # every article crawled again by the new crawler
        records.put(key, {**record, "inputs": {**record["inputs"], "crawler": new}})
    (state / "markdown.json").unlink()
    (state / "markdown.json").mkdir()  # the commit cannot replace a folder that is not empty: it fails there
    (state / "markdown.json" / "in-the-way").touch()
    with pytest.raises(OSError):
        workspace.finish("markdown")
    assert new in identities(state) and not old & identities(state).keys()
    assert (state / "markdown.journal").is_file(), "what the commit did not fold in is replayed next run"
