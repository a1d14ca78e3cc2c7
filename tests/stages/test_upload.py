"""The upload stage against an in-memory store."""

from __future__ import annotations

from pvbuild.engine import staleness
from pvbuild.stages.upload import STAGE
from tests.stages.conftest import Bench


def test_uploads_the_format_files_verified_and_then_nothing(bench: Bench) -> None:
    workspace = bench.workspace()
    assert staleness.stale(workspace, STAGE)[0].reason == "never built"
    STAGE.run(workspace)
    marker = bench.record("upload.json")
    objects: list[dict[str, str]] = marker["objects"]  # type: ignore[assignment]
    assert sorted(bench.store.objects) == sorted(entry["key"] for entry in objects)
    assert {key.rsplit("/", 2)[-2:][0] for key in bench.store.objects} == {"training", "validation"}
    assert staleness.stale(bench.workspace(), STAGE) == []
    puts = len(bench.store.puts)
    STAGE.run(bench.workspace())  # forced (doit -a): identical objects are not sent again
    assert len(bench.store.puts) == puts


def test_an_object_gone_from_the_store_is_uploaded_again_without_changing_what_follows(bench: Bench) -> None:
    STAGE.run(bench.workspace())
    gone = sorted(bench.store.objects)[0]
    del bench.store.objects[gone]
    stale = staleness.stale(bench.workspace(), STAGE)
    assert "not in the store any more" in stale[0].reason and not stale[0].propagates
    assert staleness.stale(bench.workspace(live=False), STAGE) == []  # check without --remote: files only
    STAGE.run(bench.workspace())
    assert gone in bench.store.objects and staleness.stale(bench.workspace(), STAGE) == []
