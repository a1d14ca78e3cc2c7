"""A differential (model-based) test of the whole tool on a small offline project.

A seeded generator plays a user: it edits, deletes and touches markdown, conversation and
dataset files; removes, duplicates, reorders and retitles URL rows; changes the annotator's
options, the dataset template and format, a local plugin's code and the profile's sources;
runs ``doit data`` serially, with ``-n 2`` (processes) and ``-n 2 -P thread``, per stage,
forced, killed with SIGKILL at a random moment (then run again), ``pvbuild check`` and
``pvbuild prune``. After every build it checks:

- the artifact tree is byte-identical to a clean build of the same inputs in a fresh directory
  (the only fields allowed to differ are ``pipeline.VOLATILE_FIELDS``; none occur in the data half);
- ``pvbuild check`` said "up to date" (exit 0) iff the build ran no action, and said the same without
  its machine-local caches (as on a fresh clone); every file the build
  changed was named by check (or lies under a stage check named); every finding with a reason of
  its own (not "upstream:") belongs to a stage whose action ran; after the build check exits 0;
- no temporary file or scratch folder is left, even after a kill.

The oracle is a clean build: a fresh directory with the same configuration and plugins, built
once, then given the user's hand edits that the model says survive (the URL table, then the
markdown, then the conversations, each followed by a build), as a user would re-apply them.
The model's rule for "survives" is make's: a kept hand edit lasts while the inputs of its item
are what they were at the last build. The bench script ``bench/soak_differential.py`` runs many
sequences; ``tests/test_differential.py`` runs a few in CI.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pvbuild.files import TEMP_SUFFIX

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path("artifacts/default")
TEMPLATES = ({"prompt": "关于光伏政策<{context}>, 提问: {question}", "completion": "{answer}"},
             {"prompt": "问题: {question}", "completion": "{answer}"})
MIRROR_PLUGIN = '''"""A second source for the differential test: the sample site's first list page only."""
from pvbuild import hookimpl
from pvbuild.builtins.bjx import BJX_SELECTORS
from pvbuild.builtins.sample import CANONICAL_ROOT, SampleSite

# revision {revision}


@hookimpl
def register_crawlers(register):
    register(SampleSite(name="mirror", list_url=CANONICAL_ROOT + "/zc/{{page}}", description="page 1 of the sample",
                        options={{"first_page": 1, "last_page": 1}}, **BJX_SELECTORS))
'''


@dataclass
class Inputs:
    """What a clean build is built from: configuration and plugin code."""

    source: str = "sample"
    max_pairs: int = 8
    template: int = 0
    format: str = "instruction"
    plugin_revision: int = 0
    articles_per_shard: int = 0  # 0: the default (one shard here); 3: the dataset and records in shards

    def config(self) -> str:
        template = TEMPLATES[self.template]
        pages = "first_page = 1\nlast_page = 2\n" if self.source == "sample" else ""
        return (f"[profile.default.sources.{self.source}]\n{pages}"
                f"[profile.default.annotator]\nplugin = \"extractive\"\nmax_pairs = {self.max_pairs}\n"
                f"[profile.default.dataset]\nformat = \"{self.format}\"\nvalidation_ratio = 0.2\n"
                + (f"articles_per_shard = {self.articles_per_shard}\n" if self.articles_per_shard else "") +
                f"template = {{ prompt = \"{template['prompt']}\", completion = \"{template['completion']}\" }}\n")

    def write(self, project: Path) -> None:
        (project / "pvbuild.toml").write_text(self.config(), encoding="utf-8")
        (project / "plugins").mkdir(exist_ok=True)
        (project / "plugins" / "mirror.py").write_text(MIRROR_PLUGIN.format(revision=self.plugin_revision),
                                                       encoding="utf-8")

    def crawler(self) -> tuple[str, int]:
        """What decides a markdown beside its row (the mirror's code is its version)."""
        return (self.source, self.plugin_revision if self.source == "mirror" else 0)


Tree = dict[str, bytes]


def snapshot(project: Path) -> Tree:
    root = project / ARTIFACTS
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def stats(project: Path) -> dict[str, tuple[int, int, int]]:
    root = project / ARTIFACTS
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            info = path.stat()
            found[str(path.relative_to(root))] = (info.st_ino, info.st_mtime_ns, info.st_size)
    return found


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The rows a table means: one per link, the later row winning, keyed by file_id."""
    by_link: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        by_link.pop(row["link"], None)
        by_link[row["link"]] = row
    return {row["file_id"]: row for row in by_link.values()}


def env() -> dict[str, str]:
    # PVBUILD_FORK_MIN_FILES: these small trees take the paths of large ones too (engine.prehash's workers
    # digest a fresh check's files and stat a build's), which must change no finding and no artifact.
    return {**os.environ, "PVBUILD_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "",
            "PVBUILD_PROFILE": "default", "PVBUILD_FORK_MIN_FILES": "1"}


def run(project: Path, *command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), cwd=project, env=env(), capture_output=True, text=True, timeout=timeout)


def doit(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(project, sys.executable, "-m", "doit", *args)


def pvbuild(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(project, sys.executable, "-m", "pvbuild", *args)


def executed(output: str) -> set[str]:
    """The tasks whose action ran, from doit's output (``.  name``)."""
    return {line[3:].strip() for line in output.splitlines() if line.startswith(".  ")}


class Mismatch(AssertionError):
    """An invariant failed; the message carries the seed, the steps so far and the evidence."""


@dataclass
class Model:
    """The user's inputs and the hand edits that must survive, with the state of the last build."""

    inputs: Inputs = field(default_factory=Inputs)
    table: str | None = None  # the URL table as the user wrote it
    markdown: dict[str, str] = field(default_factory=dict)  # file_id -> hand-written text
    conversations: dict[str, str] = field(default_factory=dict)
    built: dict[object, object] = field(default_factory=dict)  # what the last build was built from
    relist: bool = True  # the next build crawls the list pages again


class Differential:
    """One seeded sequence of user actions on one project, checked after every build."""

    def __init__(self, workspace: Path, seed: int, log: Callable[[str], None] = lambda line: None) -> None:
        self.random = random.Random(seed)
        self.seed = seed
        self.workspace = workspace
        self.project = workspace / "incremental"
        self.model = Model()
        self.model.inputs.articles_per_shard = 3 if seed % 2 else 0  # odd seeds start sharded
        self.steps: list[str] = []
        self.references: dict[str, tuple[Tree, dict[str, dict[str, str]]]] = {}
        self.log = log
        self.project.mkdir(parents=True)
        shutil.copy(ROOT / "dodo.py", self.project / "dodo.py")
        self.model.inputs.write(self.project)

    # -- the oracle -------------------------------------------------------------------------
    def clean(self, inputs: Inputs) -> tuple[Tree, dict[str, dict[str, str]]]:
        """A clean build of the configuration alone: its tree and its URL rows."""
        key = inputs.config() + str(inputs.plugin_revision)
        if key not in self.references:
            project = self._fresh(inputs)
            self._build_reference(project)
            tree = snapshot(project)
            self.references[key] = (tree, parse_table(tree["urls.csv"].decode("utf-8")))
            shutil.rmtree(project)
        return self.references[key]

    def _fresh(self, inputs: Inputs) -> Path:
        project = self.workspace / f"clean-{len(list(self.workspace.iterdir()))}"
        project.mkdir()
        shutil.copy(ROOT / "dodo.py", project / "dodo.py")
        inputs.write(project)
        return project

    def _build_reference(self, project: Path) -> None:
        result = doit(project, "data")
        if result.returncode != 0:
            raise Mismatch(self._where(f"a clean build failed:\n{result.stdout}\n{result.stderr}"))

    def expected(self) -> Tree:
        """The clean build of the inputs with the surviving hand edits, applied as a user would."""
        tree, _ = self.clean(self.model.inputs)
        if self.model.table is None and not self.model.markdown and not self.model.conversations:
            return tree
        project = self._fresh(self.model.inputs)
        self._build_reference(project)
        for edits, folder, suffix in (({"urls": self.model.table} if self.model.table is not None else {}, "", ""),
                                      (self.model.markdown, "markdown", ".md"),
                                      (self.model.conversations, "conversations", ".csv")):
            if not edits:
                continue
            for key, text in edits.items():
                path = project / ARTIFACTS / "urls.csv" if key == "urls" and not folder \
                    else project / ARTIFACTS / folder / f"{key}{suffix}"
                path.write_text(text, encoding="utf-8")
            self._build_reference(project)
        expected = snapshot(project)
        shutil.rmtree(project)
        return expected

    def rows(self) -> dict[str, dict[str, str]]:
        if self.model.table is not None:
            return parse_table(self.model.table)
        return self.clean(self.model.inputs)[1]

    def effective_markdown(self, file_id: str) -> bytes | None:
        if file_id in self.model.markdown:
            return self.model.markdown[file_id].encode("utf-8")
        return self.clean(self.model.inputs)[0].get(f"markdown/{file_id}.md")

    def settle(self) -> None:
        """After a successful build: drop the hand edits whose items' inputs changed (doit rebuilt
        them) and remember what this build was built from."""
        model, rows = self.model, self.rows()
        built = model.built
        lists = (model.inputs.source, model.inputs.crawler())  # what decides the list crawl
        if model.relist or built.get("lists") != lists:  # forced, or the sources changed since the last build
            model.table = None
            rows = self.rows()
        for file_id in list(model.markdown):
            unchanged = built.get(("row", file_id)) == rows.get(file_id) and \
                built.get("crawler") == model.inputs.crawler()
            if file_id not in rows or not unchanged:
                del model.markdown[file_id]
        for file_id in list(model.conversations):
            unchanged = built.get(("markdown", file_id)) == self.effective_markdown(file_id) and \
                built.get("annotator") == model.inputs.max_pairs and built.get(("row", file_id)) == rows.get(file_id)
            if file_id not in rows or not unchanged:
                del model.conversations[file_id]
        model.built = {"crawler": model.inputs.crawler(), "annotator": model.inputs.max_pairs, "lists": lists}
        for file_id, row in rows.items():
            model.built[("row", file_id)] = row
            model.built[("markdown", file_id)] = self.effective_markdown(file_id)
        model.relist = False

    # -- invariants -------------------------------------------------------------------------
    def _where(self, message: str) -> str:
        return f"seed {self.seed}, after steps {self.steps}: {message}"

    def check_findings(self) -> list[dict[str, str]]:
        """What check finds, which a check without the machine-local caches (as on a fresh clone: every
        file digested, the records' summaries instead of their memos) must find too."""
        findings = self._check()
        cache, kept = self.project / ".pvbuild", self.project / ".pvbuild-kept"
        if not cache.is_dir():
            return findings  # fresh already
        cache.rename(kept)
        try:
            fresh = self._check()
        finally:
            shutil.rmtree(cache, ignore_errors=True)
            kept.rename(cache)
        if fresh != findings:
            raise Mismatch(self._where(f"a fresh check found {fresh[:3]}, a warm one {findings[:3]}"))
        return findings

    def _check(self) -> list[dict[str, str]]:
        result = pvbuild(self.project, "check", "--json", "--until", "data")
        if result.returncode not in (0, 1):
            raise Mismatch(self._where(f"check exited {result.returncode}: {result.stderr}"))
        findings: list[dict[str, str]] = json.loads(result.stdout)["stale"]
        if (result.returncode == 1) != bool(findings):
            raise Mismatch(self._where(f"check exit {result.returncode} disagrees with its findings"))
        return findings

    def compare(self, before: list[dict[str, str]], ran: set[str], changed: set[str]) -> None:
        ran.discard("data")
        if bool(before) != bool(ran):
            raise Mismatch(self._where(f"check found {len(before)} stale artifact(s) {before[:3]} but doit ran "
                                       f"{sorted(ran) or 'nothing'}"))
        for finding in before:
            stage = "prune" if "prune step" in finding["reason"] else finding["stage"]
            if not finding["reason"].startswith("upstream:") and stage not in ran:
                raise Mismatch(self._where(f"check named {finding} but doit did not run {stage}"))
        named = {finding["output"].split(str(ARTIFACTS) + "/", 1)[-1] for finding in before}
        stages = {finding["stage"] for finding in before}
        for path in sorted(changed):
            stage = path.split("/")[0].replace(".state", "state")
            covered = path in named or "urls" in stages or any(path.startswith(f"{name}/") for name in named) or (
                stage in ("dataset",) and "dataset" in stages) or (
                path.startswith(".state/") and (path.split("/")[1].split(".")[0] in stages or "prune" in ran)) or (
                path.startswith("conversations/") and f"markdown/{Path(path).stem}.md" in named)
            if not covered:
                raise Mismatch(self._where(f"doit changed {path}, which check did not name ({sorted(named)[:8]})"))

    def no_leftovers(self) -> None:
        for path in (self.project / ARTIFACTS).rglob("*"):
            if path.name.endswith((TEMP_SUFFIX, ".tmp", ".journal")):
                raise Mismatch(self._where(f"left behind: {path}"))
        scratch = self.project / ".pvbuild" / "default" / "scratch"
        if scratch.is_dir() and any(scratch.iterdir()):
            raise Mismatch(self._where(f"scratch not emptied: {list(scratch.iterdir())}"))

    def build(self, *args: str, kill: bool = False) -> None:
        before = self.check_findings()
        old = stats(self.project)
        if kill:
            self._killed_build()
            args = ("data",)
            before, old = self.check_findings(), stats(self.project)
        result = doit(self.project, *args)
        if result.returncode != 0:
            raise Mismatch(self._where(f"doit {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                                       f"{result.stderr}"))
        new = stats(self.project)
        changed = {path for path in set(old) | set(new) if old.get(path) != new.get(path)}
        changed.discard(".state/identities.json")
        if args[0] == "-a":  # forced: doit ran urls although check had nothing against it
            result_ran = executed(result.stdout) - {"urls"}
            self.model.relist = True
        else:
            result_ran = executed(result.stdout)
        self.settle()
        if args[0] != "-a":
            self.compare(before, result_ran, changed)
        self.no_leftovers()
        expected, actual = self.expected(), snapshot(self.project)
        if expected != actual:
            raise Mismatch(self._where(describe_difference(expected, actual)))
        after = self.check_findings()
        if after:
            raise Mismatch(self._where(f"check after a successful build still finds {after[:3]}"))

    def _killed_build(self) -> None:
        process = subprocess.Popen([sys.executable, "-m", "doit", "data"], cwd=self.project, env=env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(self.random.uniform(0.2, 2.5))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    # -- user actions ---------------------------------------------------------------------
    def _pick_file(self, folder: str) -> Path | None:
        files = sorted((self.project / ARTIFACTS / folder).glob("*.*"))
        return self.random.choice(files) if files else None

    def edit_markdown(self) -> None:
        path = self._pick_file("markdown")
        if path is not None:
            text = path.read_text(encoding="utf-8") + f"\n手工补充第{len(self.steps)}段：分布式光伏可以余电上网。\n"
            path.write_text(text, encoding="utf-8")
            self.model.markdown[path.stem] = text

    def edit_conversation(self) -> None:
        path = self._pick_file("conversations")
        if path is not None:
            text = path.read_text(encoding="utf-8") + f"user,手工问题{len(self.steps)}？\nassistant,手工回答。\n"
            path.write_text(text, encoding="utf-8")
            self.model.conversations[path.stem] = text

    def delete(self, folder: str) -> None:
        path = self._pick_file(folder)
        if path is not None:
            path.unlink()
            edits = {"markdown": self.model.markdown, "conversations": self.model.conversations}.get(folder, {})
            edits.pop(path.stem, None)

    def touch(self, folder: str) -> None:
        path = self._pick_file(folder)
        if path is not None:
            os.utime(path, ns=(time.time_ns(), time.time_ns()))

    def edit_dataset(self) -> None:
        path = self.project / ARTIFACTS / "dataset" / "train.jsonl"
        if path.is_file():
            path.write_text(path.read_text(encoding="utf-8") + '{"junk": "hand edit"}\n', encoding="utf-8")

    def edit_table(self, how: str) -> None:
        path = self.project / ARTIFACTS / "urls.csv"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        header, rows = lines[0], lines[1:]
        if not rows:
            return
        index = self.random.randrange(len(rows))
        if how == "remove" and len(rows) > 2:
            del rows[index]
        elif how == "duplicate":
            rows.insert(self.random.randrange(len(rows) + 1), rows[index])
        elif how == "reorder":
            self.random.shuffle(rows)
        elif how == "retitle":
            row = next(csv.reader([rows[index]]))
            row[0] = row[0] + "（修订）"
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow(row)
            rows[index] = buffer.getvalue()
        text = header + "".join(rows)
        path.write_text(text, encoding="utf-8")
        self.model.table = text

    def change_inputs(self, what: str) -> None:
        inputs = self.model.inputs
        if what == "annotator":
            inputs.max_pairs = 8 if inputs.max_pairs != 8 else 3
        elif what == "template":
            inputs.template = 1 - inputs.template
        elif what == "format":
            inputs.format = "chat" if inputs.format == "instruction" else "instruction"
        elif what == "plugin":
            inputs.plugin_revision += 1  # the mirror's lists are crawled again if it is the source (settle)
        elif what == "sharding":
            inputs.articles_per_shard = 3 if not inputs.articles_per_shard else 0
        elif what == "sources":
            inputs.source = "mirror" if inputs.source == "sample" else "sample"
        inputs.write(self.project)

    ACTIONS: tuple[tuple[str, int], ...] = (
        ("edit markdown", 3), ("delete markdown", 2), ("touch markdown", 1), ("edit conversation", 3),
        ("delete conversation", 2), ("touch conversation", 1), ("edit dataset", 1), ("delete dataset", 1),
        ("remove row", 2), ("duplicate row", 2), ("reorder rows", 1), ("retitle row", 2),
        ("change annotator", 1), ("change template", 1), ("change format", 1), ("change plugin", 1),
        ("change sources", 1), ("change sharding", 1), ("doit", 4), ("doit -n 2", 3), ("doit -n 2 -P thread", 2),
        ("doit per stage", 1),
        ("doit -a urls", 1), ("kill doit", 2), ("prune", 1),
    )

    def step(self, action: str) -> None:
        self.steps.append(action)
        self.log(f"seed {self.seed} step {len(self.steps)}: {action}")
        verb, _, what = action.partition(" ")
        if action == "doit":
            self.build("data")
        elif action.startswith("doit -n 2"):
            self.build(*action.split()[1:], "data")
        elif action == "doit per stage":
            for stage in ("urls", "markdown", "conversations"):
                if doit(self.project, stage).returncode != 0:
                    raise Mismatch(self._where(f"doit {stage} failed"))
            self.build("data")
        elif action == "doit -a urls":
            self.build("-a", "urls", "data")
        elif action == "kill doit":
            self.build("data", kill=True)
        elif action == "prune":
            if pvbuild(self.project, "prune").returncode != 0:
                raise Mismatch(self._where("pvbuild prune failed"))
        elif verb == "edit":
            {"markdown": self.edit_markdown, "conversation": self.edit_conversation,
             "dataset": self.edit_dataset}[what]()
        elif verb == "delete":
            self.delete("dataset" if what == "dataset" else what + ("" if what == "markdown" else "s"))
        elif verb == "touch":
            self.touch(what + ("" if what == "markdown" else "s"))
        elif action.endswith(("row", "rows")):
            self.edit_table(verb)
        elif verb == "change":
            self.change_inputs(what)

    def play(self, length: int) -> None:
        self.step("doit")
        names, weights = zip(*self.ACTIONS, strict=True)
        for _ in range(length):
            self.step(self.random.choices(names, weights)[0])
        self.step("doit")


def describe_difference(expected: Tree, actual: Tree) -> str:
    import difflib

    lines = []
    for path in sorted(set(expected) | set(actual)):
        if expected.get(path) == actual.get(path):
            continue
        if path not in actual or path not in expected:
            lines.append(f"{path}: {'missing' if path not in actual else 'unexpected'} in the incremental tree")
            continue
        diff = difflib.unified_diff(expected[path].decode("utf-8", "replace").splitlines(),
                                    actual[path].decode("utf-8", "replace").splitlines(), "clean", "incremental",
                                    lineterm="", n=0)
        lines.append(f"{path} differs:\n" + "\n".join(list(diff)[:12]))
    return "the tree differs from a clean build:\n" + "\n".join(lines[:8])
