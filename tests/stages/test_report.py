"""The report's page: what a person reads about the training."""

from __future__ import annotations

from collections.abc import Mapping

from pvbuild.stages.report import render

TRAINING = {"job_name": "pv-tiny-0123456789-1", "base_model": {"name": "tiny"},
            "metrics": {"train_loss": 1.234567, "validation_loss": 2.5, "train_tokens": 12345},
            "hyperparameters": {"epoch": "1"}}


def page(training: Mapping[str, object]) -> str:
    return render({"articles": 3, "pairs": 6, "format": "instruction"}, training, {"uri": "local://m", "sha256": "ab"},
                  {"endpoint_name": "e", "backend": "local", "instance_type": ""}, [("问题？", "回答。")])


def test_examples_left_out_for_want_of_room_are_named() -> None:
    dropped = [f"train-00000-of-00002.jsonl:{line}" for line in range(1, 13)]
    html = page({**TRAINING, "dropped_examples": dropped})
    assert "examples left out (no room for a completion within max_input_length)" in html
    assert "12: train-00000-of-00002.jsonl:1, " in html and "and 2 more (training.json lists them)" in html
    assert "jsonl:11" not in html


def test_no_example_left_out_says_zero() -> None:
    html = page(TRAINING)
    assert "max_input_length)</th><td>0</td>" in html and "1.23" in html
