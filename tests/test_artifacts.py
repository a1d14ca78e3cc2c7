"""The typed records read and write exactly the JSON of the files a build leaves (and an older
version left): the committed tree does not change by being read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvbuild.artifacts import EndpointRecord, JsonRecord, ModelRecord, TrainingRecord, UploadMarker
from pvbuild.errors import StateError

LANDED = Path(__file__).parent / "fixtures" / "landed-0.1" / "artifacts" / "default"


@pytest.mark.parametrize("kind", [UploadMarker, TrainingRecord, ModelRecord, EndpointRecord])
def test_a_record_round_trips_byte_for_byte(kind: type[JsonRecord], tmp_path: Path) -> None:
    source = LANDED / kind.FILE
    record = kind.read(source)
    assert record is not None
    record.write(tmp_path / kind.FILE)
    assert (tmp_path / kind.FILE).read_bytes() == source.read_bytes()


def test_typed_fields_and_unknown_keys_kept() -> None:
    value = {**json.loads((LANDED / "training.json").read_text(encoding="utf-8")), "spot_savings": 0.7}
    record = TrainingRecord.from_json(value)
    assert record.status == "Completed" and record.attempt == 1 and record.metrics["train_loss"] > 0
    assert record.to_json() == value


def test_a_sagemaker_endpoint_record_has_no_local_fields() -> None:
    record = EndpointRecord(endpoint_name="pv-x-1", status="InService", backend="sagemaker", arn="arn:aws:x")
    assert "url" not in record.to_json() and "pid" not in record.to_json() and record.to_json()["arn"] == "arn:aws:x"


def test_a_record_missing_a_required_key_says_which_file(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"uri": "local://x"}', encoding="utf-8")
    with pytest.raises(StateError, match="model.json"):
        ModelRecord.read(tmp_path / "model.json")
