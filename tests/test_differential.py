"""The differential test in CI: a few seeded sequences of user actions (see ``tests/differential.py``);
``bench/soak_differential.py`` runs thousands."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.differential import Differential

# Fixed seeds: a failure names its seed and steps, and replays exactly with
# ``python bench/soak_differential.py --seeds SEED --steps N``.
SEEDS = (101, 202, 303)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_build_equals_a_clean_build_and_check_agrees_with_doit(tmp_path: Path, seed: int) -> None:
    sequence = Differential(tmp_path, seed)
    sequence.play(14)
    assert sequence.steps[0] == sequence.steps[-1] == "doit" and len(sequence.steps) == 16
