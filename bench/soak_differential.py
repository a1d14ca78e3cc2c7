"""Soak the differential test: many seeded sequences of user actions, each checked after every build
against a clean build and against ``pvbuild check`` (see ``tests/differential.py``).

    python bench/soak_differential.py --sequences 200 --steps 25        # seeds 1..200
    python bench/soak_differential.py --seeds 7 --steps 25              # replay one failure

Prints one line per sequence and a summary (sequences, steps, builds, failures). Stops by itself;
every process it starts is on this machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.differential import Differential, Mismatch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=20, help="how many seeds, from --first (default 20)")
    parser.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--seeds", type=int, nargs="*", help="these seeds instead")
    parser.add_argument("--steps", type=int, default=25, help="random actions per sequence (default 25)")
    args = parser.parse_args()
    seeds = args.seeds or list(range(args.first, args.first + args.sequences))
    failures, steps, builds, started = [], 0, 0, time.monotonic()
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="pvbuild-soak-") as workspace:
            sequence = Differential(Path(workspace), seed)
            try:
                sequence.play(args.steps)
                outcome = "ok"
            except Mismatch as error:
                failures.append(seed)
                outcome = f"FAILED: {error}"
            steps += len(sequence.steps)
            builds += sum(step.startswith(("doit", "kill")) for step in sequence.steps)
        print(f"seed {seed}: {len(sequence.steps)} steps: {outcome}", flush=True)
    minutes = (time.monotonic() - started) / 60
    print(f"{len(seeds)} sequences, {steps} steps, {builds} builds checked against a clean build, "
          f"{len(failures)} failed{' (seeds ' + ', '.join(map(str, failures)) + ')' if failures else ''}, "
          f"{minutes:.1f} min")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
