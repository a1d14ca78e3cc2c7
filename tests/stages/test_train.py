"""The train stage against an in-memory training service."""

from __future__ import annotations

import re

import pytest

from pvbuild.engine import staleness
from pvbuild.stages import upload
from pvbuild.stages.train import STAGE, TrainingFailed
from tests.stages.conftest import Bench


def uploaded(bench: Bench) -> Bench:
    upload.STAGE.run(bench.workspace())
    return bench


def test_one_job_per_distinct_inputs_with_the_jumpstart_request(bench: Bench) -> None:
    STAGE.run(uploaded(bench).workspace())
    request = bench.training.created[0]
    assert request.hyperparameters["instruction_tuned"] == "True" and request.hyperparameters["chat_dataset"] == "False"
    assert set(request.channels) == {"training", "validation"}
    record = bench.record("training.json")
    assert record["status"] == "Completed" and record["job_name"] == request.job_name
    assert staleness.stale(bench.workspace(), STAGE) == []
    assert len(bench.training.created) == 1


def test_a_failed_job_is_recorded_stops_and_the_next_run_is_attempt_two(bench: Bench) -> None:
    bench.training.fail = "CUDA out of memory"
    with pytest.raises(TrainingFailed, match="CUDA out of memory"):
        STAGE.run(uploaded(bench).workspace())
    assert bench.record("training.json")["status"] == "Failed"
    assert "CUDA out of memory" in staleness.stale(bench.workspace(), STAGE)[0].reason
    bench.training.fail = ""
    STAGE.run(bench.workspace())
    assert bench.record("training.json")["attempt"] == 2 and len(bench.training.created) == 2


def test_billable_seconds_are_kept_in_the_record_but_not_in_its_digest(bench: Bench) -> None:
    STAGE.run(uploaded(bench).workspace())
    path = bench.path / "artifacts/default/training.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"billable_seconds": 7', '"billable_seconds": 9'),
                    encoding="utf-8")
    assert staleness.stale(bench.workspace(), STAGE) == []


def test_a_misspelled_hyperparameter_fails_before_anything_runs(bench: Bench) -> None:
    from pvbuild.cli import main
    from pvbuild.errors import ConfigError

    (bench.path / "pvbuild.toml").write_text("[profile.default.training]\nhyperparameters = { epochs = 3 }\n",
                                             encoding="utf-8")
    with pytest.raises(ConfigError, match="training.hyperparameters.epochs: unknown hyperparameter of tiny "
                                          r"\(did you mean 'epoch'\?\)"):
        staleness.stale(uploaded(bench).workspace(), STAGE)
    assert bench.training.created == []
    assert main(["--project", str(bench.path), "check"]) == 2


@pytest.mark.parametrize(("toml", "message"), [
    ("epoch = 0", "training.hyperparameters.epoch = 0: must be a whole number of at least 1"),
    ("epoch = 2.5", "training.hyperparameters.epoch = 2.5: must be a whole number of at least 1"),
    ("learning_rate = -0.001", "training.hyperparameters.learning_rate = -0.001: must be a number above 0"),
    ("lora_dropout = 1.0", "training.hyperparameters.lora_dropout = 1.0: must be a number from 0 to below 1"),
    ('max_input_length = "long"', "training.hyperparameters.max_input_length = 'long': must be a whole number"),
    ('int8_quantization = "yes"', "training.hyperparameters.int8_quantization = 'yes': must be True or False"),
])
def test_a_hyperparameter_out_of_range_fails_before_anything_runs(bench: Bench, toml: str, message: str) -> None:
    from pvbuild.errors import ConfigError

    (bench.path / "pvbuild.toml").write_text(f"[profile.default.training.hyperparameters]\n{toml}\n",
                                             encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        staleness.stale(uploaded(bench).workspace(), STAGE)
    assert bench.training.created == []


def test_jumpstart_s_minus_one_and_flags_as_strings_are_accepted(bench: Bench) -> None:
    (bench.path / "pvbuild.toml").write_text("[profile.default.training.hyperparameters]\nmax_train_samples = -1\n"
                                             'int8_quantization = "False"\n', encoding="utf-8")
    assert staleness.stale(uploaded(bench).workspace(), STAGE)  # stale (never trained), not an error
