"""A tree committed by an earlier version stays valid: today's ``check`` reads it, and only what
really changed (here: the endpoint was torn down) is stale, so an upgrade retrains nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import ROOT
from tests.differential import pvbuild

LANDED = Path(__file__).parent / "fixtures" / "landed-0.1"


def test_a_tree_built_by_pvbuild_0_1_is_up_to_date_but_its_torn_down_endpoint(tmp_path: Path) -> None:
    shutil.copytree(LANDED / "artifacts", tmp_path / "artifacts")
    shutil.copy(ROOT / "dodo.py", tmp_path / "dodo.py")
    result = pvbuild(tmp_path, "check", "--json")
    assert result.returncode == 1, result.stderr
    stale = json.loads(result.stdout)["stale"]
    assert [(finding["stage"], finding["reason"]) for finding in stale] == [
        ("deploy", "endpoint pv-tiny-0c2a4226f0-1 is Deleted")]
    assert pvbuild(tmp_path, "check", "--until", "data").returncode == 0
