"""No-op and one-changed-article `doit` times at 1,000 and 10,000 synthetic articles: pvbuild's
stage-level tasks versus plain doit with one task per article per stage, on the same tree.

Run: python bench/bench_noop.py [counts...]   (default: 1000 10000)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pvbuild.config import load_config  # noqa: E402
from pvbuild.engine.url_table import UrlRow, write_urls  # noqa: E402
from pvbuild.engine.workspace import Workspace  # noqa: E402
from pvbuild.stages.catalog import stage_named  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# The baseline: what a user writes with plain doit, one task per article and stage.
PLAIN_DODO = '''
import csv, pathlib
A = pathlib.Path("artifacts/default")
P = pathlib.Path("plain")
ROWS = list(csv.DictReader(open(A / "urls.csv", encoding="utf-8")))
DOIT_CONFIG = {"dep_file": ".plain-doit.db", "backend": "json", "verbosity": 0}

def copy(src, dst):
    pathlib.Path(dst).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(dst).write_bytes(pathlib.Path(src).read_bytes())

def task_markdown():
    for row in ROWS:
        src, out = str(A / "markdown" / (row["file_id"] + ".md")), str(P / "md" / (row["file_id"] + ".md"))
        yield {"name": row["file_id"], "actions": [(copy, [src, out])], "file_dep": [src], "targets": [out]}

def task_conversations():
    for row in ROWS:
        md, out = str(P / "md" / (row["file_id"] + ".md")), str(P / "conv" / (row["file_id"] + ".csv"))
        yield {"name": row["file_id"], "actions": [(copy, [md, out])], "file_dep": [md], "targets": [out]}

def task_dataset():
    deps = [str(P / "conv" / (row["file_id"] + ".csv")) for row in ROWS]
    return {"actions": [(copy, [deps[0], P / "dataset.jsonl"])], "file_dep": deps,
            "targets": [str(P / "dataset.jsonl")]}
'''


def synthesize(project: Path, count: int) -> None:
    """A built default-profile tree of ``count`` articles, with records, as pvbuild leaves it."""
    shutil.copy(ROOT / "dodo.py", project / "dodo.py")
    (project / "plugins").mkdir()
    pipeline = Workspace(load_config(project))
    rows = [UrlRow(f"文章{i}", f"http://sample.pvbuild.invalid/zc/2025/{100000 + i}.shtml",
                   f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}", str(100000 + i), "sample") for i in range(count)]
    write_urls(pipeline.urls_csv, rows)
    for stage_dir in (pipeline.markdown_dir, pipeline.conversation_dir):
        stage_dir.mkdir(parents=True)
    for row in rows:
        pipeline.markdown_path(row.file_id).write_text(f"# {row.title}\n正文{row.file_id}。\n", encoding="utf-8")
        pipeline.conversation_path(row.file_id).write_text(
            f"role,content\nuser,问{row.file_id}\nassistant,答{row.file_id}\n", encoding="utf-8")
    for stage in ("urls", "markdown", "conversations"):
        records = pipeline.records(stage)
        for item in stage_named(stage).items(pipeline):
            records.put(item.key, {"inputs": dict(item.inputs), "output": pipeline.hasher.digest(item.output)})
        records.commit()
    # Build the (small) dataset for real so its record matches.
    stage_named("dataset").run(pipeline)


# Commands run as on a user's machine, where Python caches bytecode: some environments (this
# one) set PYTHONDONTWRITEBYTECODE, which would recompile pvbuild at every start.
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=ENV)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started


def best_of(runs: int, command: list[str], cwd: Path) -> float:
    return min(timed(command, cwd) for _ in range(runs))


def main(counts: list[int]) -> None:
    doit = [sys.executable, "-m", "doit", "data"]  # the data half (the synthetic tree has no model half)
    print(f"{'articles':>9} {'case':<22} {'pvbuild s':>10} {'plain doit s':>13} {'ratio':>7}")
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp)
            synthesize(project, count)
            (project / "plain.py").write_text(PLAIN_DODO, encoding="utf-8")
            plain = [sys.executable, "-m", "doit", "-f", "plain.py"]
            timed(doit, project)  # warm the stat cache, as after any build
            timed(plain, project)  # plain doit's first run records its file_dep state
            noop_ours, noop_plain = best_of(3, doit, project), best_of(3, plain, project)
            print(f"{count:>9} {'no-op':<22} {noop_ours:>10.3f} {noop_plain:>13.3f} {noop_plain / noop_ours:>6.1f}x")
            for changed in (project / "artifacts/default/markdown/100007.md", project / "plain/md/100007.md"):
                changed.write_text(changed.read_text(encoding="utf-8") + "改动。\n", encoding="utf-8")
            one_ours, one_plain = timed(doit, project), timed(plain, project)
            print(f"{count:>9} {'one changed article':<22} {one_ours:>10.3f} {one_plain:>13.3f} "
                  f"{one_plain / one_ours:>6.1f}x")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1000, 10000])
