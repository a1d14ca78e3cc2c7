"""Scale: pvbuild against make and ninja mirrors of the same chain, on the same files, in the same run.

For each N, a synthetic tree of N articles (the bundled sample site's text, varied per article;
URL table and markdown already built, as after a crawl) is built by ``doit data`` (the offline
``extractive`` annotator, then the sharded dataset), and by a Makefile and a build.ninja of the
same graph: one rule per article (markdown -> conversation, a copy) and one per dataset shard (the
shard's conversations concatenated, the same shard assignment), then a manifest of the shards.
Then, each timed several times (median and range): no-op; ``pvbuild check --until data`` warm,
fresh (the machine-local cache removed, in a folder that is not a git repository) and on a fresh
git clone of the built tree (as a CI runner has it); one edited article; ``touch`` of every
markdown file. pvbuild's peak memory (max RSS) and the number of files it rewrote are printed too.
Each timed pvbuild run is followed by a ninja run on the same tree (a no-op, or the same edit): ``/ninja``
is the ratio of the medians, ``pairs`` the range of the ratios within each pair, since this VM's
speed drifts between runs.

Run: python bench/bench_scale.py [N ...] [--runs R] [--no-make]   (default: 10000; R = 5; --no-make
leaves make out: at 100,000 articles each of its runs takes about a minute)
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pvbuild.config import load_config  # noqa: E402
from pvbuild.engine.records import file_output  # noqa: E402
from pvbuild.engine.shards import shard_count, shard_of  # noqa: E402
from pvbuild.engine.url_table import UrlRow, write_urls  # noqa: E402
from pvbuild.engine.workspace import Workspace  # noqa: E402
from pvbuild.stages.catalog import stage_named  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Commands run as on a user's machine, where Python caches bytecode (this VM sets PYTHONDONTWRITEBYTECODE).
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"} | {"PVBUILD_QUIET": "1"}
DOIT = [sys.executable, "-m", "doit", "data"]
CHECK = [sys.executable, "-m", "pvbuild", "check", "--until", "data"]


def sample_markdown() -> list[str]:
    """The sample site's articles as markdown (headings and paragraphs; enough for the annotator)."""
    texts = []
    for page in sorted((ROOT / "pvbuild" / "sample_site").rglob("*.shtml")):
        body = page.read_text(encoding="utf-8")
        parts = re.findall(r"<(h1|h2|p)>(.*?)</\1>", body, flags=re.S)
        texts.append("\n\n".join(("# " if tag == "h1" else "## " if tag == "h2" else "") + html.unescape(text)
                                 for tag, text in parts) + "\n")
    return texts


def synthesize(project: Path, count: int) -> list[str]:
    """A default-profile tree of ``count`` crawled articles, with the URL and markdown records."""
    shutil.copy(ROOT / "dodo.py", project / "dodo.py")
    (project / "plugins").mkdir()
    workspace = Workspace(load_config(project))
    texts = sample_markdown()
    rows = [UrlRow(f"文章{i}", f"http://sample.pvbuild.invalid/zc/2025/{100000 + i}.shtml",
                   f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}", str(100000 + i), "sample") for i in range(count)]
    write_urls(workspace.urls_csv, rows)
    workspace.markdown_dir.mkdir(parents=True)
    for index, row in enumerate(rows):
        workspace.markdown_path(row.file_id).write_text(f"{texts[index % len(texts)]}\n编号{row.file_id}。\n",
                                                        encoding="utf-8")
    for stage in ("urls", "markdown"):
        records = workspace.records(stage)
        for item in stage_named(stage).items(workspace):
            # As the crawl records them: a markdown file's digest and git blob id.
            output = file_output(Path(item.output).read_bytes()) if stage == "markdown" else {
                "output": workspace.hasher.digest(item.output)}
            records.put(item.key, {"inputs": dict(item.inputs), **output})
        records.commit()
    return [row.file_id for row in rows]


def write_mirrors(project: Path, file_ids: list[str]) -> None:
    """build.ninja and Makefile of the same graph, each writing under its own folder."""
    shards: dict[int, list[str]] = {}
    count = shard_count(len(file_ids))
    for file_id in file_ids:
        shards.setdefault(shard_of(file_id, count), []).append(file_id)
    markdown = "artifacts/default/markdown"
    ninja = ["rule cp\n  command = cp $in $out\n", "rule cat\n  command = cat $in > $out\n",
             "rule list\n  command = ls -l $in > $out\n"]
    ninja += [f"build ninja/conv/{i}.csv: cp {markdown}/{i}.md\n" for i in file_ids]
    make = [".PHONY: all\nall: make/manifest\n", f"make/conv/%.csv: {markdown}/%.md\n\t@mkdir -p make/conv\n"
            "\t@cp $< $@\n"]
    for index, members in sorted(shards.items()):
        ninja.append(f"build ninja/shard-{index}.jsonl: cat " + " ".join(f"ninja/conv/{i}.csv" for i in members)
                     + "\n")
        make.append(f"make/shard-{index}.jsonl: " + " ".join(f"make/conv/{i}.csv" for i in members)
                    + "\n\t@cat $^ > $@\n")
    shard_files = [f"shard-{index}.jsonl" for index in sorted(shards)]
    ninja.append("build ninja/manifest: list " + " ".join(f"ninja/{name}" for name in shard_files) + "\n")
    make.append("make/manifest: " + " ".join(f"make/{name}" for name in shard_files) + "\n\t@ls -l $^ > $@\n")
    (project / "build.ninja").write_text("".join(ninja), encoding="utf-8")
    (project / "Makefile").write_text("".join(make), encoding="utf-8")
    (project / "ninja" / "conv").mkdir(parents=True)


def run(command: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """Seconds and peak memory (KiB) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code not in ok:
        raise SystemExit(f"{' '.join(command)} exited {code}:\n{output.decode(errors='replace')[-3000:]}")
    return elapsed, usage.ru_maxrss


def git_clone(project: Path) -> Path | None:
    """The built tree committed to git and cloned beside it (as a CI runner gets it), or None without git."""
    if shutil.which("git") is None:
        return None
    (project / ".gitignore").write_text(".pvbuild/\n", encoding="utf-8")
    quiet = {"cwd": project, "check": True, "stdout": subprocess.DEVNULL}
    subprocess.run(["git", "init", "-q"], **quiet)  # type: ignore[call-overload]
    subprocess.run(["git", "add", "-A"], **quiet)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@invalid", "-c", "gc.auto=0", "commit",
                    "-qm", "built"], **quiet)  # type: ignore[call-overload]
    clone = Path(tempfile.mkdtemp(prefix="pvbuild-scale-clone-")) / "tree"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], **quiet)  # type: ignore[call-overload]
    return clone


def snapshot(root: Path) -> dict[str, int]:
    seen = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            seen[path] = os.stat(path).st_mtime_ns
    return seen


def rewritten(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(1 for path, mtime in after.items() if before.get(path) != mtime)


class Table:
    def __init__(self) -> None:
        print(f"{'articles':>9} {'case':<22} {'pvbuild s':>17} {'make s':>17} {'ninja s':>17} {'/ninja':>7}"
              f" {'pairs':>11} {'files':>6} {'peak MB':>8}", flush=True)

    @staticmethod
    def cell(times: list[float]) -> str:
        if len(times) == 1:
            return f"{times[0]:.3f}"
        return f"{statistics.median(times):.3f} ({min(times):.2f}-{max(times):.2f})"

    def row(self, count: int, case: str, ours: list[float], make: list[float], ninja: list[float],
            files: str = "", peak: str = "") -> None:
        """``/ninja``: the ratio of the medians; ``pairs``: the range of the ratios of each pvbuild run to
        the ninja run right after it (the VM's speed drifts: a pair saw the same machine)."""
        ratio = statistics.median(ours) / statistics.median(ninja) if ninja else float("nan")
        ratios = [mine / theirs for mine, theirs in zip(ours, ninja, strict=True)] if len(ours) == len(ninja) > 1 \
            else []
        pairs = f"{min(ratios):.1f}-{max(ratios):.1f}x" if ratios else "-"
        print(f"{count:>9} {case:<22} {self.cell(ours):>17} {self.cell(make) if make else '-':>17} "
              f"{self.cell(ninja):>17} {ratio:>6.1f}x {pairs:>11} {files:>6} {peak:>8}", flush=True)


def paired(ours: Callable[[], tuple[float, int]], ninja: list[str], project: Path,
           runs: int) -> tuple[list[float], list[int], list[float]]:
    """``runs`` times: one pvbuild run (seconds, peak KiB), then ninja's no-op on the same tree."""
    seconds, peaks, theirs = [], [], []
    for _ in range(runs):
        took, peak = ours()
        seconds.append(took)
        peaks.append(peak)
        theirs.append(run(ninja, project)[0])
    return seconds, peaks, theirs


def measure(count: int, runs: int, table: Table, with_make: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="pvbuild-scale-") as tmp:
        project = Path(tmp)
        file_ids = synthesize(project, count)
        write_mirrors(project, file_ids)
        ninja = ["ninja", "-j2"]

        def make(times: int = 1) -> list[float]:
            return [run(["make", "-s", "-j2"], project)[0] for _ in range(times)] if with_make else []
        artifacts = project / "artifacts"

        seconds, peak = run(DOIT, project)
        full_make = make()
        full_ninja, _ = run(ninja, project)
        table.row(count, "full build", [seconds], full_make, [full_ninja], "", f"{peak / 1024:.0f}")

        run(DOIT, project)  # the second run settles the stat cache, as after any build
        noop, peaks, ninja_noop = paired(lambda: run(DOIT, project), ninja, project, runs)
        table.row(count, "no-op", noop, make(runs), ninja_noop, "0", f"{max(peaks) / 1024:.0f}")
        warm, _, ninja_warm = paired(lambda: run(CHECK, project), ninja, project, runs)
        table.row(count, "check warm", warm, [], ninja_warm)

        def fresh_check() -> tuple[float, int]:
            shutil.rmtree(project / ".pvbuild" / "default", ignore_errors=True)  # the machine-local cache
            return run(CHECK, project)
        fresh, _, ninja_fresh = paired(fresh_check, ninja, project, runs)
        table.row(count, "check fresh, no git", fresh, [], ninja_fresh)
        run(DOIT, project)  # the stat cache back
        clone = git_clone(project)
        if clone is not None:
            def cloned_check() -> tuple[float, int]:
                shutil.rmtree(clone / ".pvbuild", ignore_errors=True)  # as just cloned
                return run(CHECK, clone)
            try:
                cloned, _, ninja_cloned = paired(cloned_check, ninja, project, runs)
            finally:
                shutil.rmtree(clone.parent)
            table.row(count, "check fresh git clone", cloned, [], ninja_cloned)

        ours, by_make, by_ninja, files, peaks = [], [], [], [], []
        for attempt in range(runs):
            edited = artifacts / "default" / "markdown" / f"{file_ids[(attempt * 7919) % count]}.md"
            with edited.open("a", encoding="utf-8") as stream:
                stream.write(f"\n## 补充{attempt}\n\n本文于今日更新第{attempt}次。\n")
            before = snapshot(artifacts)
            seconds, peak = run(DOIT, project)
            files.append(rewritten(before, snapshot(artifacts)))
            ours.append(seconds)
            peaks.append(peak)
            by_make += make()
            by_ninja.append(run(ninja, project)[0])
        table.row(count, "one edited article", ours, by_make, by_ninja,
                  f"{min(files)}-{max(files)}" if min(files) != max(files) else str(files[0]),
                  f"{max(peaks) / 1024:.0f}")

        now = time.time()
        for path in (artifacts / "default" / "markdown").iterdir():
            os.utime(path, (now, now))
        seconds, peak = run(DOIT, project)
        table.row(count, "touch every markdown", [seconds], make(), [run(ninja, project)[0]],
                  "", f"{peak / 1024:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("counts", nargs="*", type=int, default=[10000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-make", action="store_true", help="leave make out (its column reads -)")
    arguments = parser.parse_args()
    for tool in ("ninja",) if arguments.no_make else ("make", "ninja"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install -y make ninja-build")
    table = Table()
    for count in arguments.counts:
        measure(count, arguments.runs, table, not arguments.no_make)


if __name__ == "__main__":
    main()
