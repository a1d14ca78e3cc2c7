"""Shards: the dataset and the records of many articles are rebuilt, rewritten and uploaded a shard at a
time, and what they hold is what one file would hold (``datasets`` and JumpStart read it the same)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.bench_scale import synthesize
from pvbuild.engine.records import StageRecords
from pvbuild.engine.shards import shard_count, shard_name, shard_of
from pvbuild.errors import StateError
from tests.differential import doit, pvbuild

CONFIG = "[profile.default.dataset]\narticles_per_shard = 8\nvalidation_ratio = 0.25\n"


def mtimes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


def test_shard_assignment_is_stable_and_splits_when_the_count_doubles() -> None:
    assert [shard_count(n, 8) for n in (0, 1, 8, 9, 16, 17, 100)] == [1, 1, 1, 2, 2, 4, 16]
    assert shard_name("train.jsonl", 3, 16) == "train-00003-of-00016.jsonl" and shard_name("a.json", 0, 1) == "a.json"
    for key in (str(100000 + i) for i in range(200)):
        assert shard_of(key, 16) % 8 == shard_of(key, 8)  # a shard of 8 splits into two of 16


def test_a_sharded_dataset_reads_as_one_and_one_edit_rewrites_one_shard(tmp_path: Path) -> None:
    (tmp_path / "pvbuild.toml").write_text(CONFIG, encoding="utf-8")
    file_ids = synthesize(tmp_path, 40)
    assert doit(tmp_path, "upload").returncode == 0
    artifacts = tmp_path / "artifacts" / "default"
    dataset = artifacts / "dataset"
    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["shard_count"] == 8 and manifest["articles"] == 40 and len(manifest["shards"]) == 8
    assert sorted(path.name for path in (artifacts / ".state" / "conversations").iterdir()) == [
        f"{index:05d}-of-00008.json" for index in range(8)] + ["summary.json"]

    import datasets

    loaded = datasets.load_from_disk(str(dataset / "arrow"))
    assert loaded["train"].num_rows == manifest["train_articles"]
    assert loaded["validation"].num_rows == manifest["validation_articles"] > 0
    assert sorted(list(loaded["train"]["id"]) + list(loaded["validation"]["id"])) == sorted(file_ids)
    lines = datasets.load_dataset("json", data_files=str(dataset / "train-*.jsonl"), split="train")
    assert lines.num_rows == sum(1 for path in dataset.glob("train-*.jsonl")
                                 for _ in path.read_text(encoding="utf-8").splitlines())
    assert set(lines.column_names) == {"context", "question", "answer"}

    earlier = {entry["digest"] for entry in json.loads((artifacts / "upload.json").read_text(encoding="utf-8"))[
        "objects"]}
    edited = file_ids[5]
    with (artifacts / "markdown" / f"{edited}.md").open("a", encoding="utf-8") as stream:
        stream.write("\n## 补充说明\n\n本文新增一节。\n")
    before = mtimes(artifacts)
    result = doit(tmp_path, "upload")
    assert result.returncode == 0, result.stdout + result.stderr
    changed = {name for name, mtime in mtimes(artifacts).items() if before.get(name) != mtime}
    shard = f"-{shard_of(edited, 8):05d}-of-00008"
    dataset_files = {name for name in changed if name.startswith("dataset/")}
    assert dataset_files and all(shard in name or name.endswith(("state.json", "manifest.json")) for name in
                                 dataset_files), dataset_files
    assert {name for name in changed if name.startswith(".state/")} <= {
        ".state/identities.json", ".state/dataset.json", ".state/upload.json",
        f".state/markdown/{shard_of(edited, 8):05d}-of-00008.json", ".state/markdown/summary.json",
        f".state/conversations/{shard_of(edited, 8):05d}-of-00008.json", ".state/conversations/summary.json"}
    sent = re.search(r"\((\d+) file\(s\) sent, (\d+) copied from the last upload", result.stdout + result.stderr)
    assert sent is not None, result.stdout + result.stderr
    marker = json.loads((artifacts / "upload.json").read_text(encoding="utf-8"))
    new = [entry["key"] for entry in marker["objects"] if entry["digest"] not in earlier]
    assert int(sent.group(1)) == len(new) > 0 and all(shard in key for key in new), new
    assert int(sent.group(2)) == len(marker["objects"]) - int(sent.group(1))
    files = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))["files"]
    assert all(entry["digest"] == files[entry["key"].rsplit("/", 1)[1]] for entry in marker["objects"])
    assert pvbuild(tmp_path, "check", "--until", "upload").returncode == 0


def test_records_rewrite_only_the_shards_of_changed_keys_and_lay_out_again(tmp_path: Path) -> None:
    state = tmp_path / ".state"
    records = StageRecords(state, "markdown", tmp_path / "cache", per_shard=2)
    for index in range(7):
        records.put(str(index), {"inputs": {"row": f"r{index}"}, "output": f"o{index}"})
    records.commit()
    folder = state / "markdown"
    assert sorted(path.name for path in folder.iterdir()) == [f"{i:05d}-of-00004.json" for i in range(4)] + [
        "summary.json"]
    assert not (state / "markdown.json").exists() and not (state / "markdown.journal").exists()
    before = mtimes(folder)
    records.put("3", {"inputs": {"row": "changed"}, "output": "o3"})
    records.commit()
    assert sorted(name for name, mtime in mtimes(folder).items() if before[name] != mtime) == [
        f"{shard_of('3', 4):05d}-of-00004.json", "summary.json"]
    again = StageRecords(state, "markdown", tmp_path / "cache", per_shard=2)  # from the marshal copy
    fresh = StageRecords(state, "markdown", None, per_shard=2)  # a fresh clone: the JSON files
    assert again.records == fresh.records == records.records and fresh.records["3"]["inputs"]["row"] == "changed"
    for index in range(1, 7):
        fresh.drop(str(index))
    fresh.commit()
    assert not folder.exists() and json.loads((state / "markdown.json").read_text(encoding="utf-8")) == {
        "0": {"inputs": {"row": "r0"}, "output": "o0"}}


def test_records_read_a_shard_only_when_one_of_its_keys_is_asked_for(tmp_path: Path) -> None:
    state, folder = tmp_path / ".state", tmp_path / ".state" / "markdown"
    records = StageRecords(state, "markdown", None, per_shard=2)
    for index in range(8):
        records.put(str(index), {"inputs": {"row": f"r{index}"}, "output": f"o{index}"})
    records.commit()
    own = f"{shard_of('3', 4):05d}-of-00004.json"
    others = {path.name: path.read_bytes() for path in folder.glob("*-of-*.json") if path.name != own}
    assert len(others) == 3
    for name in others:  # unreadable: a reader that opened them would fail
        (folder / name).write_text("{not json", encoding="utf-8")
    lazy = StageRecords(state, "markdown", None, per_shard=2)
    assert lazy.get("3") == {"inputs": {"row": "r3"}, "output": "o3"}
    lazy.put("3", {"inputs": {"row": "changed"}, "output": "o3"})  # an edit: its shard alone is rewritten
    lazy.commit()
    assert '"changed"' in (folder / own).read_text(encoding="utf-8")
    assert all((folder / name).read_text(encoding="utf-8") == "{not json" for name in others)
    with pytest.raises(StateError, match="cannot read build records"):
        lazy.records  # noqa: B018 - every record: the other shards are read now

    for name, data in others.items():
        (folder / name).write_bytes(data)
    grown = StageRecords(state, "markdown", None, per_shard=2)
    grown.put("8", {"inputs": {"row": "r8"}, "output": "o8"})  # a new key: nine records need eight shards
    grown.commit()
    assert sorted(path.name for path in folder.glob("*-of-*.json")) == [f"{i:05d}-of-00008.json" for i in range(8)]
    expected = {str(i): {"inputs": {"row": "changed" if i == 3 else f"r{i}"}, "output": f"o{i}"} for i in range(9)}
    assert StageRecords(state, "markdown", None, per_shard=2).records == expected

    journaled = StageRecords(state, "markdown", None, per_shard=2)
    journaled.put("5", {"inputs": {"row": "journaled"}, "output": "o5"})  # interrupted before commit
    assert StageRecords(state, "markdown", None, per_shard=2).get("5") == {"inputs": {"row": "journaled"},
                                                                          "output": "o5"}
    (folder / "00000-of-00002.json").write_text('{\n"x": {"output": "ox"}\n}\n', encoding="utf-8")
    mixed = StageRecords(state, "markdown", None, per_shard=2)  # two layouts side by side: read whole
    assert mixed.get("x") == {"output": "ox"} and mixed.get("5") == {"inputs": {"row": "journaled"}, "output": "o5"}


def test_changing_the_shard_size_lays_the_records_out_again_and_rebuilds_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "pvbuild.toml").write_text(CONFIG, encoding="utf-8")
    synthesize(tmp_path, 20)
    assert doit(tmp_path, "data").returncode == 0
    conversations = tmp_path / "artifacts" / "default" / "conversations"
    before = mtimes(conversations)
    (tmp_path / "pvbuild.toml").write_text(CONFIG.replace("= 8", "= 64"), encoding="utf-8")
    check = pvbuild(tmp_path, "check", "--until", "data")
    assert check.returncode == 1 and "articles_per_shard = 64 gives 1" in check.stdout, check.stdout
    assert doit(tmp_path, "data").returncode == 0
    state = tmp_path / "artifacts" / "default" / ".state"
    assert (state / "conversations.json").is_file() and not (state / "conversations").exists()
    assert mtimes(conversations) == before  # no article annotated again
    assert pvbuild(tmp_path, "check", "--until", "data").returncode == 0


def test_a_trainer_that_reads_one_file_per_channel_gets_the_shards_joined_without_parsing(tmp_path: Path) -> None:
    from pvbuild.builtins.formats import INSTRUCTION
    from pvbuild.config import load_config
    from pvbuild.engine.workspace import Workspace
    from pvbuild.stages.upload import joined, upload_plan

    (tmp_path / "pvbuild.toml").write_text(CONFIG, encoding="utf-8")
    synthesize(tmp_path, 40)
    assert doit(tmp_path, "data").returncode == 0
    workspace = Workspace(load_config(tmp_path))
    manifest = json.loads(workspace.manifest.read_text(encoding="utf-8"))
    shards = sorted(workspace.dataset_dir.glob("train-*-of-00008.jsonl"))
    plan = upload_plan(manifest, INSTRUCTION.channels, one_file=True)
    assert sorted(plan["training"]) == ["template.json", "train.jsonl"]  # one data file, and the template
    assert plan != upload_plan(manifest, INSTRUCTION.channels)  # another upload than the shards'
    path = joined(workspace, manifest, "train.jsonl", "training")
    assert path.read_bytes() == b"".join(shard.read_bytes() for shard in shards)


def test_the_staleness_memo_never_hides_a_change_to_records_or_files(tmp_path: Path) -> None:
    """The memo of a stage last found up to date (``.pvbuild/<profile>/clean/``) only saves work: a
    records file changed by hand (a merge), an edited conversation and a retitled row are all seen."""
    (tmp_path / "pvbuild.toml").write_text(CONFIG, encoding="utf-8")
    file_ids = synthesize(tmp_path, 20)
    assert doit(tmp_path, "data").returncode == 0
    assert pvbuild(tmp_path, "check", "--until", "data").returncode == 0  # the memo is written
    state = tmp_path / "artifacts" / "default" / ".state"
    shard = next((state / "conversations").glob("*.json"))
    records = json.loads(shard.read_text(encoding="utf-8"))
    key = sorted(records)[0]
    records[key]["output"] = "0" * 32
    shard.write_text(json.dumps(records), encoding="utf-8")
    result = pvbuild(tmp_path, "check", "--until", "data", "--json")
    assert result.returncode == 1 and key in result.stdout, result.stdout
    assert doit(tmp_path, "data").returncode == 0 and pvbuild(tmp_path, "check", "--until", "data").returncode == 0
    conversation = tmp_path / "artifacts" / "default" / "conversations" / f"{file_ids[3]}.csv"
    conversation.write_text(conversation.read_text(encoding="utf-8") + "user,问\nassistant,答\n", encoding="utf-8")
    result = pvbuild(tmp_path, "check", "--until", "data", "--json")
    assert result.returncode == 1 and file_ids[3] in result.stdout, result.stdout
    assert doit(tmp_path, "data").returncode == 0 and pvbuild(tmp_path, "check", "--until", "data").returncode == 0
    table = tmp_path / "artifacts" / "default" / "urls.csv"
    table.write_text(table.read_text(encoding="utf-8").replace("文章5,", "文章五,"), encoding="utf-8")
    result = pvbuild(tmp_path, "check", "--until", "data", "--json")
    assert result.returncode == 1 and file_ids[5] in result.stdout, result.stdout
