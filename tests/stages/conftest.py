"""A workspace with a small real dataset and in-memory services, for one stage at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvbuild.config import load_config
from pvbuild.engine.url_table import UrlRow
from pvbuild.engine.workspace import Workspace
from pvbuild.plugin_types import Message
from pvbuild.stages.dataset_files import Conversation, write_dataset
from tests.memory_services import MemoryEndpoints, MemoryStore, MemoryTraining


@dataclass
class Bench:
    """A project directory, its in-memory services and a fresh workspace on demand."""

    path: Path
    store: MemoryStore
    training: MemoryTraining
    endpoints: MemoryEndpoints

    def workspace(self, live: bool = True) -> Workspace:
        services = {"store": self.store, "training": self.training, "endpoint": self.endpoints}
        return Workspace(load_config(self.path), live=live, services=services)

    def record(self, name: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.path / "artifacts/default" / name).read_text(encoding="utf-8"))
        return loaded


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bench:
    monkeypatch.setenv("PVBUILD_QUIET", "1")
    monkeypatch.delenv("PVBUILD_PROFILE", raising=False)  # `pvbuild build --profile` of another test sets it
    (tmp_path / "plugins").mkdir()
    dataset = tmp_path / "artifacts/default/dataset"
    dataset.mkdir(parents=True)
    rows = [UrlRow(f"光伏政策{i}", f"http://x.invalid/{i}.shtml", "2025-08-01", str(i), "sample") for i in range(5)]
    conversations = [Conversation(row, [Message("user", f"第{row.file_id}号政策讲了什么？"),
                                        Message("assistant", f"第{row.file_id}号政策要求先备案。")]) for row in rows]
    workspace = Workspace(load_config(tmp_path))
    manifest = write_dataset(dataset, conversations, workspace.config.dataset)
    (dataset / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n",
                                           encoding="utf-8")
    store = MemoryStore()
    return Bench(tmp_path, store, MemoryTraining(store), MemoryEndpoints())
