"""engine.summaries: a records shard's summary vouches for its items on a fresh clone only while the shard
has the bytes it was made from and the items are exactly what its records say; anything else is parsed
and compared as before. The summary is what a clean build writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.bench_scale import synthesize
from pvbuild.config import load_config
from pvbuild.engine.records import StageRecords, digest_bytes
from pvbuild.engine.shards import shard_of
from pvbuild.engine.summaries import SUMMARY, ItemColumns, columns_digest, sha256
from pvbuild.engine.workspace import Workspace
from pvbuild.stages.catalog import stage_named
from tests.differential import doit, pvbuild

CONFIG = "[profile.default.dataset]\narticles_per_shard = 8\nvalidation_ratio = 0.25\n"


def recorded(state: Path, count: int = 8, cache: Path | None = None) -> StageRecords:
    """``count`` records of a stage in shards of two, committed."""
    records = StageRecords(state, "markdown", cache, per_shard=2)
    for index in range(count):
        records.put(str(index), {"blob": f"b{index}", "inputs": {"row": f"r{index}", "crawler": "c"},
                                 "output": f"o{index}"})
    records.commit()
    return records


def columns(count: int = 8, changed: dict[int, str] | None = None) -> ItemColumns:
    """The items those records were built for (``changed``: an output that is not the recorded one)."""
    keys = [str(index) for index in range(count)]
    outputs: list[str | None] = [(changed or {}).get(index, f"o{index}") for index in range(count)]
    return ItemColumns(keys, {"row": [f"r{index}" for index in range(count)], "crawler": ["c"] * count}, outputs)


def test_the_digest_tells_every_key_input_and_output_apart() -> None:
    base = columns_digest(["a", "b"], {"row": ["1", "2"], "crawler": ["c", "c"]}, ["x", "y"])
    others = [
        columns_digest(["a", "c"], {"row": ["1", "2"], "crawler": ["c", "c"]}, ["x", "y"]),
        columns_digest(["a", "b"], {"row": ["2", "1"], "crawler": ["c", "c"]}, ["x", "y"]),
        columns_digest(["a", "b"], {"row": ["1", "2"], "model": ["c", "c"]}, ["x", "y"]),
        columns_digest(["a", "b"], {"row": ["1", "2"], "crawler": ["c", "c"]}, ["y", "x"]),
        columns_digest(["a", "b"], {"row": ["1", "2"]}, ["x", "y"]),
    ]
    assert base is not None and None not in others and len({base, *others}) == 6
    # Not summarised (compared record by record instead): an input or output missing, a line break.
    assert columns_digest(["a"], {"row": [None]}, ["x"]) is None
    assert columns_digest(["a"], {"row": ["1"]}, [None]) is None
    assert columns_digest(["a", "b"], {"row": ["1\n2", "3"]}, ["x", "y"]) is None
    assert columns_digest(["a"], {}, ["x"]) is None


def test_the_summary_is_one_line_per_shard_and_what_a_clean_build_writes(tmp_path: Path) -> None:
    recorded(tmp_path / "clean")
    folder = tmp_path / "clean" / "markdown"
    lines = (folder / SUMMARY).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 + 4 and lines[0] == "{" and lines[-1] == "}"
    summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    assert sum(entry["records"] for entry in summary.values()) == 8
    assert all(entry["file"] == sha256((folder / name).read_bytes()) for name, entry in summary.items())

    # Records committed before there were summaries: the next commit writes the whole summary.
    recorded(tmp_path / "upgraded")
    (tmp_path / "upgraded" / "markdown" / SUMMARY).unlink()
    records = StageRecords(tmp_path / "upgraded", "markdown", None, per_shard=2)
    records.put("3", {"blob": "b3", "inputs": {"row": "r3", "crawler": "c"}, "output": "o3"})  # as it was
    records.commit()
    assert (tmp_path / "upgraded" / "markdown" / SUMMARY).read_bytes() == (folder / SUMMARY).read_bytes()
    # A shard rewritten by a pvbuild without summaries (its summary line now stale): summarised again.
    older = StageRecords(tmp_path / "upgraded", "markdown", None, per_shard=2)
    older.put("5", {"blob": "b5", "inputs": {"row": "changed", "crawler": "c"}, "output": "o5"})
    older.commit()
    (tmp_path / "upgraded" / "markdown" / SUMMARY).write_bytes((folder / SUMMARY).read_bytes())  # as before it
    records = StageRecords(tmp_path / "upgraded", "markdown", None, per_shard=2)
    other = next(str(index) for index in range(8) if shard_of(str(index), 4) != shard_of("5", 4))
    records.put(other, records.get(other) or {})
    records.commit()
    clean = StageRecords(tmp_path / "clean-again", "markdown", None, per_shard=2)
    for key, record in StageRecords(tmp_path / "upgraded", "markdown", None, per_shard=2).records.items():
        clean.put(key, record)
    clean.commit()
    assert (tmp_path / "upgraded" / "markdown" / SUMMARY).read_bytes() == (
        tmp_path / "clean-again" / "markdown" / SUMMARY).read_bytes()
    # A layout written anew (nine records need eight shards) carries its own summary.
    records.put("8", {"inputs": {"row": "r8", "crawler": "c"}, "output": "o8"})
    records.commit()
    assert len(json.loads((tmp_path / "upgraded" / "markdown" / SUMMARY).read_text(encoding="utf-8"))) == 8


def test_vouched_items_are_neither_parsed_nor_compared(tmp_path: Path) -> None:
    state, cache = tmp_path / ".state", tmp_path / "cache"
    recorded(state)
    fresh = StageRecords(state, "markdown", cache, per_shard=2)  # a fresh clone: no marshal copy yet
    assert fresh.vouched(columns()) == {str(index) for index in range(8)}
    assert sorted(fresh.keys()) == [str(index) for index in range(8)]
    assert not cache.exists(), "no shard was parsed (a parsed shard leaves its marshal copy)"

    edited = StageRecords(state, "markdown", cache, per_shard=2)
    settled = edited.vouched(columns(changed={3: "edited"}))

    def outside(key: str, count: int = 8) -> set[str]:
        """The keys of the first ``count`` not in the shard of ``key``."""
        return {str(index) for index in range(count) if shard_of(str(index), 4) != shard_of(key, 4)}
    assert settled == outside("3")
    missing = columns()
    assert edited.vouched(ItemColumns(missing.keys, missing.inputs, [None, *missing.outputs[1:]])) == outside("0")
    assert edited.vouched(columns(count=7)) == outside("7", 7)  # a record without an item: its shard is compared


def test_a_shard_changed_by_hand_or_a_journal_left_by_a_kill_is_not_vouched_for(tmp_path: Path) -> None:
    state = tmp_path / ".state"
    recorded(state)
    shard = state / "markdown" / f"{shard_of('5', 4):05d}-of-00004.json"
    shard.write_text(shard.read_text(encoding="utf-8").replace("\n", "\n "), encoding="utf-8")  # same records
    settled = StageRecords(state, "markdown", None, per_shard=2).vouched(columns())
    assert settled == {str(index) for index in range(8) if shard_of(str(index), 4) != shard_of("5", 4)}

    recorded(state)
    summary = state / "markdown" / SUMMARY
    summary.write_text(summary.read_text(encoding="utf-8").replace('"records"', '"count"', 1), encoding="utf-8")
    assert StageRecords(state, "markdown", None, per_shard=2).vouched(columns()) == set()  # malformed: unused

    recorded(state)
    killed = StageRecords(state, "markdown", None, per_shard=2)
    killed.put("1", {"inputs": {"row": "r1", "crawler": "c"}, "output": "o1"})  # journaled, not committed
    assert StageRecords(state, "markdown", None, per_shard=2).vouched(columns()) == set()


def test_a_stage_fingerprint_says_what_its_items_are(tmp_path: Path) -> None:
    """The item columns a fingerprint hands to the summaries are the stage's own items."""
    (tmp_path / "pvbuild.toml").write_text(CONFIG, encoding="utf-8")
    file_ids = synthesize(tmp_path, 12)
    assert doit(tmp_path, "data").returncode == 0
    (tmp_path / "artifacts" / "default" / "markdown" / f"{file_ids[4]}.md").unlink()  # no item in conversations
    workspace = Workspace(load_config(tmp_path))
    workspace.hasher.remember()
    for name in ("markdown", "conversations"):
        stage = stage_named(name)
        fingerprint = stage.fingerprint(workspace)
        assert fingerprint is not None and fingerprint.items is not None
        items = stage.items(workspace)
        found = fingerprint.items
        assert list(found.keys) == [item.key for item in items], name
        assert [{key: values[at] for key, values in found.inputs.items()} for at in range(len(found.keys))] == [
            dict(item.inputs) for item in items], name
        assert list(found.outputs) == workspace.hasher.digests([item.file for item in items]), name


def test_a_fresh_clone_finds_what_changed_and_parses_only_its_shard(tmp_path: Path) -> None:
    (tmp_path / "pvbuild.toml").write_text(CONFIG, encoding="utf-8")
    file_ids = synthesize(tmp_path, 20)
    assert doit(tmp_path, "data").returncode == 0
    artifacts = tmp_path / "artifacts" / "default"

    def fresh_check() -> dict[str, str]:
        shutil.rmtree(tmp_path / ".pvbuild")
        result = pvbuild(tmp_path, "check", "--until", "data", "--json")
        assert result.returncode in (0, 1), result.stderr
        return {f"{finding['stage']} {finding['key']}": finding["reason"]
                for finding in json.loads(result.stdout)["stale"]}

    assert fresh_check() == {}
    records = tmp_path / ".pvbuild" / "default" / "records"
    assert not any(name.name.startswith(("0", "1")) for name in records.rglob("*-of-*")), "no shard parsed"

    conversation = artifacts / "conversations" / f"{file_ids[6]}.csv"
    conversation.write_bytes(conversation.read_bytes() + b"\n")
    found = fresh_check()
    assert found[f"conversations {file_ids[6]}"] == "output edited since it was built"
    parsed = sorted(path.name for path in (records / "conversations").glob("*.marshal"))
    assert parsed == [f"{shard_of(file_ids[6], 4):05d}-of-00004.json.marshal"]
    conversation.write_bytes(conversation.read_bytes()[:-1])

    shard = artifacts / ".state" / "markdown" / f"{shard_of(file_ids[9], 4):05d}-of-00004.json"
    table = json.loads(shard.read_text(encoding="utf-8"))
    table[file_ids[9]]["inputs"]["row"] = digest_bytes(b"another row")  # a records file changed by a merge
    shard.write_text(json.dumps(table), encoding="utf-8")
    found = fresh_check()
    assert found[f"markdown {file_ids[9]}"] == "input changed: row", found


def test_a_vouched_shard_gives_its_blob_ids_without_being_parsed(tmp_path: Path) -> None:
    """On a git clone, every record's blob id maps git's answer to a digest: read off the lines of the
    shards a summary vouches for, which then stay unparsed (and their items vouched for)."""
    state, cache = tmp_path / ".state", tmp_path / "cache"
    records = StageRecords(state, "conversations", cache, per_shard=2)
    expected = {}
    for index in range(8):
        blob, output = sha256(b"b%d" % index)[:40], digest_bytes(b"o%d" % index)
        records.put(str(index), {"blob": blob, "inputs": {"row": f"r{index}"}, "output": output, "pairs": 3})
        expected[blob] = output
    records.put("8", {"inputs": {"row": "r8"}, "output": digest_bytes(b"o8")})  # older than blob ids
    records.commit()
    shutil.rmtree(cache)
    fresh = StageRecords(state, "conversations", cache, per_shard=2)
    assert fresh.blob_digests() == expected
    assert not cache.exists(), "no shard was parsed"
    shard = state / "conversations" / f"{shard_of('3', 8):05d}-of-00008.json"
    shard.write_text(shard.read_text(encoding="utf-8") + "\n", encoding="utf-8")  # no longer as summarised
    assert StageRecords(state, "conversations", None, per_shard=2).blob_digests() == expected


def test_a_fresh_git_clone_reads_blob_ids_off_the_summarised_shards(tmp_path: Path) -> None:
    from tests.test_gitindex import git

    project = tmp_path / "project"
    project.mkdir()
    (project / "pvbuild.toml").write_text(CONFIG, encoding="utf-8")
    file_ids = synthesize(project, 20)
    assert doit(project, "data").returncode == 0
    (project / ".gitignore").write_text(".pvbuild/\n", encoding="utf-8")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "built")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    result = pvbuild(clone, "check", "--until", "data")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list((clone / ".pvbuild" / "default" / "records").rglob("*-of-*")), "no shard was parsed"
    conversation = clone / "artifacts" / "default" / "conversations" / f"{file_ids[2]}.csv"
    conversation.write_bytes(conversation.read_bytes() + b"\n")
    shutil.rmtree(clone / ".pvbuild")
    result = pvbuild(clone, "check", "--until", "data", "--json")
    found = {f"{finding['stage']} {finding['key']}": finding["reason"]
             for finding in json.loads(result.stdout)["stale"]}
    assert result.returncode == 1 and found[f"conversations {file_ids[2]}"] == "output edited since it was built"
