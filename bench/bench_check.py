"""`pvbuild check` on 10,000 synthetic articles, beside `doit list --status` on the same tree.

Two cases: a warm stat cache (as on the machine that built it) and a fresh clone (no
``.pvbuild/``: every file is hashed). Times include interpreter start-up, as a user sees them.

Run: python bench/bench_check.py [counts...]   (default: 10000)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_noop import ENV, synthesize  # noqa: E402


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=ENV)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started


def main(counts: list[int]) -> None:
    check = [sys.executable, "-m", "pvbuild", "check"]
    listing = [sys.executable, "-m", "doit", "list", "--status", "--all"]
    print(f"{'articles':>9} {'case':<26} {'pvbuild check s':>16} {'doit list --status s':>21} {'ratio':>6}")
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp)
            synthesize(project, count)
            timed(check, project)
            warm = min(timed(check, project) for _ in range(3))
            doit_list = min(timed(listing, project) for _ in range(3))
            print(f"{count:>9} {'warm stat cache':<26} {warm:>16.3f} {doit_list:>21.3f} {doit_list / warm:>5.1f}x")
            fresh = []
            for _ in range(3):
                shutil.rmtree(project / ".pvbuild", ignore_errors=True)
                fresh.append(timed(check, project))
            print(f"{count:>9} {'fresh clone (no cache)':<26} {min(fresh):>16.3f}")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [10000])
