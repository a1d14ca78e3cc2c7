"""The package and deploy stages against in-memory services: an unchanged model is not
redeployed, a dead endpoint is, and an interrupted deploy is cleaned up."""

from __future__ import annotations

import json

from pvbuild.engine import staleness
from pvbuild.stages import deploy, package, train, upload
from pvbuild.stages.deploy import teardown
from tests.stages.conftest import Bench


def deployed(bench: Bench) -> Bench:
    for stage in (upload.STAGE, train.STAGE, package.STAGE, deploy.STAGE):
        stage.run(bench.workspace())
    return bench


def test_the_packed_model_is_served_once(bench: Bench) -> None:
    deployed(bench)
    request = bench.endpoints.deployed[0]
    assert request.name == bench.record("training.json")["job_name"]
    assert request.model["sha256"] == bench.record("model.json")["sha256"]
    assert bench.record("endpoint.json")["status"] == "InService"
    assert staleness.stale(bench.workspace(), package.STAGE) == []
    assert staleness.stale(bench.workspace(), deploy.STAGE) == []


def test_a_dead_endpoint_is_redeployed_and_nothing_after_it_changes(bench: Bench) -> None:
    deployed(bench)
    bench.endpoints.down.add(str(bench.record("endpoint.json")["endpoint_name"]))
    stale = staleness.stale(bench.workspace(), deploy.STAGE)
    assert "does not answer" in stale[0].reason and not stale[0].propagates


def test_teardown_then_an_interrupted_deploy_leaves_nothing_behind(bench: Bench) -> None:
    deployed(bench)
    assert "torn down" in teardown(bench.workspace())
    assert bench.record("endpoint.json")["status"] == "Deleted"
    path = bench.path / "artifacts/default/endpoint.json"
    creating = {**bench.record("endpoint.json"), "status": "Creating", "previous": None}
    path.write_text(json.dumps(creating), encoding="utf-8")  # what a kill during deploy leaves
    assert staleness.stale(bench.workspace(), deploy.STAGE)  # the record is not what deploy recorded
    deploy.STAGE.run(bench.workspace())
    assert bench.record("endpoint.json")["status"] == "InService" and "previous" not in bench.record("endpoint.json")
