"""Regression tests for exactness: each failure a user met (doit, check and the artifacts disagreeing)
has a named test here; ``test_differential`` looks for the ones nobody has met yet."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvbuild.builtins.sample import serve_directory
from pvbuild.engine.workspace import VOLATILE_FIELDS
from tests.conftest import ROOT, Project, site_and_llm_config
from tests.differential import ARTIFACTS, Inputs, doit, env, pvbuild, snapshot
from tests.standins import FakeOpenAI, FixtureSite


@pytest.fixture
def offline(tmp_path: Path) -> Path:
    """A project on the bundled sample site with the offline annotator, data half built."""
    shutil.copy(ROOT / "dodo.py", tmp_path / "dodo.py")
    Inputs().write(tmp_path)
    assert doit(tmp_path, "data").returncode == 0
    return tmp_path


def artifacts(project: Path) -> Path:
    return project / ARTIFACTS


def check(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return pvbuild(project, "check", "--until", "data", *args)


def stale(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    found: list[dict[str, str]] = json.loads(result.stdout)["stale"]
    return found


def write_table(project: Path, edit: object) -> None:
    table = artifacts(project) / "urls.csv"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    table.write_text("".join(edit(lines)), encoding="utf-8")  # type: ignore[operator]


def test_parallel_processes_rebuild_the_dataset_after_an_edit(offline: Path) -> None:
    markdown = sorted((artifacts(offline) / "markdown").glob("*.md"))[0]
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n补充：并网容量。\n", encoding="utf-8")
    result = doit(offline, "-n", "2", "data")
    assert result.returncode == 0, result.stderr
    assert ".  dataset" in result.stdout  # the child's conversation reached the parent's check
    assert check(offline).returncode == 0


def test_switched_sources_are_pruned_and_check_says_why(offline: Path) -> None:
    Inputs(source="mirror").write(offline)
    before = check(offline, "--json")
    assert before.returncode == 1
    orphans = [f for f in stale(before) if "orphan" in f["reason"]]
    # a "may": the lists are crawled again first, and the mirror lists some of the same links
    assert orphans and all("source 'sample' is no longer configured" in f["reason"] and f["reason"].startswith(
        "upstream: urls is stale") for f in orphans)
    assert doit(offline, "data").returncode == 0
    rows = (artifacts(offline) / "urls.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert rows and all(row.endswith(",mirror") for row in rows)
    ids = {row.split(",")[3] for row in rows}
    assert {p.stem for p in (artifacts(offline) / "markdown").iterdir()} == ids
    assert {p.stem for p in (artifacts(offline) / "conversations").iterdir()} == ids
    for stage in ("markdown", "conversations"):
        assert set(json.loads((artifacts(offline) / ".state" / f"{stage}.json").read_text())) == ids
    assert check(offline).returncode == 0


def test_a_misspelled_profile_table_is_an_error(offline: Path) -> None:
    (offline / "pvbuild.toml").write_text('[profile.dfault.sources.sample]\nfirst_page = 1\n', encoding="utf-8")
    result = pvbuild(offline, "check")
    assert result.returncode == 2 and "did you mean 'default'" in result.stderr


def test_prune_lists_with_dry_run_and_removes(offline: Path) -> None:
    write_table(offline, lambda lines: lines[:1] + lines[2:])
    removed = (artifacts(offline) / "urls.csv").read_text(encoding="utf-8")
    dry = pvbuild(offline, "prune", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("would remove orphan") == 2
    assert len(list((artifacts(offline) / "markdown").iterdir())) == 12
    assert pvbuild(offline, "prune").stdout.count("removed orphan") == 2
    assert len(list((artifacts(offline) / "markdown").iterdir())) == 11
    assert (artifacts(offline) / "urls.csv").read_text(encoding="utf-8") == removed
    assert doit(offline, "data").returncode == 0 and check(offline).returncode == 0


def test_an_exact_duplicate_row_is_one_article(offline: Path) -> None:
    write_table(offline, lambda lines: lines + [lines[3]])
    assert doit(offline, "data").returncode == 0
    ids = [json.loads(line)["id"] for line in (artifacts(offline) / "dataset" / "conversations.jsonl").open()]
    assert len(ids) == len(set(ids)) == 12
    assert check(offline).returncode == 0


def test_a_file_id_collision_names_both_lines(offline: Path) -> None:
    def collide(lines: list[str]) -> list[str]:
        other = lines[3].split(",")
        lines[2] = ",".join([*lines[2].split(",")[:3], other[3], lines[2].split(",")[4]])
        return lines
    write_table(offline, collide)
    built = doit(offline, "data")
    assert built.returncode != 0 and "urls.csv:4: file_id" in built.stdout and "of line 3" in built.stdout
    result = check(offline)
    assert result.returncode == 2 and "urls.csv:4: file_id" in result.stderr


def test_an_empty_source_names_the_line(offline: Path) -> None:
    write_table(offline, lambda lines: [*lines[:4], lines[4].rstrip("\n").rsplit(",", 1)[0] + ",\n", *lines[5:]])
    result = check(offline)
    assert result.returncode == 2 and "urls.csv:5: empty source" in result.stderr


def test_an_unconfigured_source_names_the_line(offline: Path) -> None:
    write_table(offline, lambda lines: [*lines[:2], lines[2].replace(",sample", ",smaple"), *lines[3:]])
    result = check(offline)
    assert result.returncode == 2 and "urls.csv:3: source 'smaple' (did you mean 'sample'?)" in result.stderr


def test_a_list_page_that_keeps_failing_fails_doit_urls(project: Project, site: FixtureSite, llm: FakeOpenAI) -> None:
    project.config(site_and_llm_config(site, llm).replace("last_page = 2", "last_page = 3"))  # page 3: HTTP 404
    assert project.build("-a", "urls") != 0
    assert project.build("urls") != 0  # and again: it is retried, and still fails


def test_a_template_placeholder_the_data_lacks_is_a_configuration_error(offline: Path) -> None:
    config = offline / "pvbuild.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("{question}", "{question} {region}"),
                      encoding="utf-8")
    result = pvbuild(offline, "check")
    assert result.returncode == 2 and "dataset.template" in result.stderr and "region" in result.stderr


def test_check_into_a_closed_pipe_keeps_its_exit_code(offline: Path) -> None:
    (artifacts(offline) / "dataset" / "train.jsonl").unlink()
    process = subprocess.Popen([sys.executable, "-m", "pvbuild", "check"], cwd=offline, env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader went away, as `pvbuild check | head` does
    errors = process.stderr.read().decode()
    assert process.wait() == 1 and "Traceback" not in errors and "Broken pipe" not in errors


def test_non_http_links_are_left_out_and_counted(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "zc").mkdir(parents=True)
    items = "".join(f'<li><a href="{href}">标题{i}</a><span>2025-08-0{i}</span></li>' for i, href in enumerate(
        ["/zc/a1.shtml", "javascript:void(0)", "mailto:news@example.com"], start=1))
    (site / "zc" / "1").write_text(f'<div class="cc-layout-3"><div class="box"><div class="center"><ul>{items}</ul>'
                                   '</div></div></div>', encoding="utf-8")
    (site / "zc" / "a1.shtml").write_text('<div class="cc-article"><h1>t</h1><div id="article_cont"><p>光伏电站'
                                          '应当配置储能。</p></div></div>', encoding="utf-8")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "dodo.py", project / "dodo.py")
    with serve_directory(site) as base:
        (project / "pvbuild.toml").write_text(f'[profile.default.sources.bjx]\nlist_url = "{base}/zc/{{page}}"\n'
                                              'first_page = 1\nlast_page = 1\nretries = 0\n', encoding="utf-8")
        result = doit(project, "urls")
    assert result.returncode == 0, result.stderr
    assert "2 non-HTTP link(s) left out" in result.stderr
    assert len((artifacts(project) / "urls.csv").read_text(encoding="utf-8").splitlines()) == 2


def test_artifacts_respect_the_umask(tmp_path: Path) -> None:
    shutil.copy(ROOT / "dodo.py", tmp_path / "dodo.py")
    Inputs().write(tmp_path)
    result = subprocess.run(["bash", "-c", f"umask 027 && {sys.executable} -m doit data"], cwd=tmp_path, env=env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    modes = {path.relative_to(tmp_path).as_posix(): path.stat().st_mode & 0o777
             for path in artifacts(tmp_path).rglob("*")}
    assert modes and all(mode == (0o750 if (tmp_path / path).is_dir() else 0o640) for path, mode in modes.items()), \
        {path: oct(mode) for path, mode in modes.items() if mode not in (0o750, 0o640)}


def test_leftovers_of_a_killed_build_are_reported_and_removed(offline: Path) -> None:
    leftovers = [artifacts(offline) / ".dataset-x1y2z3.pvbuild-tmp", artifacts(offline) / ".report-abc123",
                 artifacts(offline) / "markdown" / ".1455093.md.k2j3h4.pvbuild-tmp",
                 artifacts(offline) / ".urls.csv.q1w2e3r4.tmp",
                 offline / ".pvbuild" / "default" / "scratch" / "pvbuild-train-abc" / "checkpoint.bin"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.startswith((".dataset", ".report")):
            path.mkdir()
        else:
            path.write_text("partial", encoding="utf-8")
    before = check(offline, "--json")
    assert before.returncode == 1 and len([f for f in stale(before) if "interrupted" in f["reason"]]) == 5
    assert doit(offline, "data").returncode == 0
    assert not any(path.exists() for path in leftovers)
    assert check(offline).returncode == 0


def test_a_journal_left_by_a_kill_is_folded_in(offline: Path) -> None:
    state = artifacts(offline) / ".state"
    records = json.loads((state / "markdown.json").read_text(encoding="utf-8"))
    before = (state / "markdown.json").read_bytes()
    (state / "markdown.json").unlink()
    (state / "markdown.journal").write_text("".join(json.dumps({"key": key, "record": record}) + "\n"
                                                    for key, record in records.items()), encoding="utf-8")
    result = check(offline)
    assert result.returncode == 1 and "markdown.journal" in result.stdout
    built = doit(offline, "data")
    assert built.returncode == 0 and ".  prune" in built.stdout and ".  markdown" not in built.stdout
    assert (state / "markdown.json").read_bytes() == before and not (state / "markdown.journal").exists()


@pytest.mark.parametrize("folds", ["doit", "doit -n 2", "pvbuild prune"])
def test_a_folded_journal_keeps_the_identities_its_records_name(offline: Path, folds: str) -> None:
    """Found by the soak (seed 16102): a run killed while a changed crawler re-crawled left a journal whose
    records name the crawler's new identity, which identities.json did not have yet (identities are saved
    as the step finishes). The next run's prune step folded the journal in and settled identities.json
    before the markdown step had computed that identity, so the file lost it for good."""
    state = artifacts(offline) / ".state"
    records = json.loads((state / "markdown.json").read_text(encoding="utf-8"))
    identities = (state / "identities.json").read_bytes()
    crawler = next(iter(records.values()))["inputs"]["crawler"]
    known = json.loads(identities)
    del known[crawler]
    (state / "identities.json").write_text(json.dumps(known), encoding="utf-8")
    (state / "markdown.json").unlink()
    (state / "markdown.journal").write_text("".join(json.dumps({"key": key, "record": record}) + "\n"
                                                    for key, record in records.items()), encoding="utf-8")
    if folds.startswith("doit"):
        assert doit(offline, *folds.split()[1:], "data").returncode == 0
    else:
        assert pvbuild(offline, "prune").returncode == 0
    assert json.loads((state / "identities.json").read_bytes()) == json.loads(identities)
    assert not (state / "markdown.journal").exists()


def test_a_zero_byte_doit_database_is_started_afresh(offline: Path) -> None:
    (offline / ".pvbuild" / "doit.db").write_bytes(b"")
    result = doit(offline, "data")
    assert result.returncode == 0 and "Traceback" not in result.stderr and "afresh" in result.stderr


def test_ctrl_c_ends_without_a_traceback(offline: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "doit", "package"], cwd=offline, env=env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # interrupt while the model trains (seconds, even for the tiny model)
        seen.append(line)
        if line.startswith("train: job"):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=60)
    err = "".join(seen) + err
    assert process.returncode != 0 and "Traceback" not in err + out, err + out
    assert "interrupted (Ctrl-C)" in err + out
    assert doit(offline, "package").returncode == 0  # the rerun starts the job again and finishes


def _serve_processes(project: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in command and any(str(project).encode() in part for part in command):
                found.append(int(entry.name))
    return found


def test_a_kill_during_deploy_leaves_no_unrecorded_server(tmp_path: Path) -> None:
    shutil.copy(ROOT / "dodo.py", tmp_path / "dodo.py")
    record = artifacts(tmp_path) / "endpoint.json"
    process = subprocess.Popen([sys.executable, "-m", "doit"], cwd=tmp_path, env=env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (record.is_file() and '"Creating"' in record.read_text(encoding="utf-8")):
            assert process.poll() is None and time.monotonic() < deadline, "the deploy step never started"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        recorded = json.loads(record.read_text(encoding="utf-8"))["pid"]
        assert _serve_processes(tmp_path) in ([recorded], [])  # started, or killed with doit before it ran
        assert doit(tmp_path).returncode == 0
        serving = json.loads(record.read_text(encoding="utf-8"))
        assert serving["status"] == "InService" and _serve_processes(tmp_path) == [serving["pid"]]
        assert pvbuild(tmp_path, "teardown").returncode == 0
        deadline = time.monotonic() + 10
        while _serve_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _serve_processes(tmp_path) == []
    finally:
        for pid in _serve_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _stable(tree: dict[str, bytes]) -> dict[str, object]:
    """The tree with the fields that legitimately differ between two builds taken out."""
    stable: dict[str, object] = {}
    for path, data in tree.items():
        volatile = VOLATILE_FIELDS.get(Path(path).name)
        stable[path] = data if volatile is None else {
            key: value for key, value in json.loads(data).items() if key not in volatile}
    return stable


def test_two_clean_builds_of_the_whole_chain_are_identical(tmp_path: Path) -> None:
    trees = []
    for name in ("first", "second"):
        project = tmp_path / name
        project.mkdir()
        shutil.copy(ROOT / "dodo.py", project / "dodo.py")
        try:
            assert doit(project).returncode == 0
            trees.append(_stable(snapshot(project)))
        finally:
            pvbuild(project, "teardown")
    assert trees[0].keys() == trees[1].keys()
    differing = [path for path in trees[0] if trees[0][path] != trees[1][path]]
    assert differing == []  # .state/train.json, deploy.json, report.json and the report included


def test_parallel_processes_keep_every_identity_a_record_refers_to(offline: Path) -> None:
    """Found by the soak (seed 1010): a child process that read identities.json before another
    child added the new annotator's identity wrote it back without it."""
    state = artifacts(offline) / ".state"
    for max_pairs in (3, 4, 5):  # each time one process crawls and builds the dataset, another annotates
        sorted((artifacts(offline) / "markdown").glob("*.md"))[0].unlink()
        Inputs(max_pairs=max_pairs).write(offline)
        assert doit(offline, "-n", "2", "data").returncode == 0
        known = json.loads((state / "identities.json").read_text(encoding="utf-8"))
        for stage in ("urls", "markdown", "conversations", "dataset"):
            for record in json.loads((state / f"{stage}.json").read_text(encoding="utf-8")).values():
                for name, value in record["inputs"].items():
                    if name in ("sources", "crawler", "annotator", "options"):
                        assert value in known, (max_pairs, stage, name)


def test_a_hand_edit_that_a_recrawl_will_overwrite_is_a_may_for_its_conversation(tmp_path: Path) -> None:
    """Found by the soak (seed 2025): the crawler changed and a markdown was edited by hand; check said
    its conversation would be annotated again, but the markdown is crawled again first, to the bytes the
    conversation was built from, and doit rightly leaves the conversation alone."""
    shutil.copy(ROOT / "dodo.py", tmp_path / "dodo.py")
    Inputs(source="mirror").write(tmp_path)
    assert doit(tmp_path, "data").returncode == 0
    Inputs(source="mirror", plugin_revision=1).write(tmp_path)  # the mirror plugin's code changed
    page = sorted((artifacts(tmp_path) / "markdown").glob("*.md"))[0]
    page.write_text(page.read_text(encoding="utf-8") + "\n手工补充。\n", encoding="utf-8")
    conversation = artifacts(tmp_path) / "conversations" / f"{page.stem}.csv"
    before = conversation.stat().st_mtime_ns
    found = {(f["stage"], f["key"]): f["reason"] for f in stale(check(tmp_path, "--json"))}
    assert found[("markdown", page.stem)] == "input changed: crawler"
    assert found[("conversations", page.stem)].startswith("upstream: markdown is stale")
    assert doit(tmp_path, "data").returncode == 0
    assert conversation.stat().st_mtime_ns == before and check(tmp_path).returncode == 0
