"""Training in several processes through accelerate's launcher (two CPU processes stand in for two GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvbuild.services.launch import LaunchError, LaunchSpec, launch, processes_for
from tests.models import TEMPLATE, hyperparameters, instruction_lines, write_channel


def test_auto_is_one_process_on_the_cpu_and_a_number_is_that_many() -> None:
    assert processes_for("auto", "cpu") == 1
    assert processes_for(2, "cpu") == 2


def test_two_processes_leave_one_model_and_one_result(tiny_base: Path, tmp_path: Path) -> None:
    train = write_channel(tmp_path / "training", instruction_lines(32), TEMPLATE)
    spec = LaunchSpec(str(tiny_base), str(train), None, hyperparameters(chat=False, epoch=2), str(tmp_path / "model"),
                      False, "cpu", "drop", str(tmp_path / "result.json"))
    result = launch(spec, 2, tmp_path / "training.log")
    assert result.processes == 2 and result.global_batch_size == 2 * 8
    assert result.train_examples == 24 and result.epoch_train_loss[-1] < result.epoch_train_loss[0]
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "result.json", "result.spec.json",
                                                                "training", "training.log"]


def test_a_failed_process_is_reported_with_the_end_of_its_log(tmp_path: Path) -> None:
    train = write_channel(tmp_path / "training", instruction_lines(8), TEMPLATE)
    spec = LaunchSpec(str(tmp_path / "no-such-model"), str(train), None, hyperparameters(chat=False),
                      str(tmp_path / "model"), False, "cpu", "drop", str(tmp_path / "result.json"))
    with pytest.raises(LaunchError, match=r"training in 2 processes failed \(exit [1-9]\d*\): [\w.]+Error: .*"
                                          r"no-such-model.*; the processes' output is in .*training.log"):
        launch(spec, 2, tmp_path / "training.log")
    assert not (tmp_path / "model").exists() and not (tmp_path / "result.json").exists()
