"""`pvbuild check` on a fresh `git clone` of a built example project: exit codes and reasons."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvbuild.check import check as check_stale
from pvbuild.cli import main
from pvbuild.config import load_config
from pvbuild.engine.prehash import prehash
from pvbuild.engine.workspace import Workspace
from pvbuild.errors import PvbuildError
from tests.aws import Moto, moto_server
from tests.conftest import ROOT, _stop_endpoints
from tests.standins import FakeOpenAI

CONFIG = """
[profile.test]
artifacts = "artifacts/test"
[profile.test.annotator]
plugin = "openai"
base_url = "{llm}/v1"
[profile.test.storage]
backend = "s3"
bucket = "pv-bucket"
[profile.test.aws]
region = "us-east-1"
endpoint_url = "{moto}"
[profile.test.training.hyperparameters]
epoch = 1
"""


def git(directory: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=directory,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with moto_server() as running:
        running.client("s3").create_bucket(Bucket="pv-bucket")
        yield running


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory, moto: Moto) -> Iterator[Path]:
    """Built once: sample source, the openai annotator (fake server), S3 on moto, local training."""
    root = tmp_path_factory.mktemp("example")
    shutil.copy(ROOT / "dodo.py", root / "dodo.py")
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = "sk-test-check-0123456789"
    try:
        with FakeOpenAI() as llm:
            (root / "pvbuild.toml").write_text(CONFIG.format(llm=llm.url, moto=moto.url), encoding="utf-8")
            assert main(["--project", str(root), "build", "--profile", "test", "report"]) == 0
    finally:
        os.environ.pop("OPENAI_API_KEY") if saved is None else os.environ.update(OPENAI_API_KEY=saved)
    (root / ".gitignore").write_text(".pvbuild/\n", encoding="utf-8")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "built")
    yield root
    _stop_endpoints(root)


@pytest.fixture
def clone(example: Path, tmp_path: Path) -> Path:
    git(tmp_path, "clone", "-q", str(example), "clone")
    return tmp_path / "clone"


def check(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PVBUILD_", "OPENAI_"))}
    return subprocess.run([sys.executable, "-m", "pvbuild", "--project", str(project), "check", "--profile", "test",
                           *args], capture_output=True, text=True, env=env, timeout=120)


def stale(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    found: list[dict[str, object]] = json.loads(result.stdout)["stale"]
    return found


def test_a_fresh_clone_is_up_to_date(clone: Path) -> None:
    result = check(clone)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every artifact is up to date" in result.stdout
    assert not (clone / ".pvbuild" / "doit.db").exists()


def test_a_hand_edited_markdown_names_it_and_everything_downstream(clone: Path) -> None:
    markdown = sorted((clone / "artifacts/test/markdown").glob("*.md"))[3]
    markdown.write_text(markdown.read_text(encoding="utf-8") + "\n补充说明。\n", encoding="utf-8")
    result = check(clone, "--json")
    assert result.returncode == 1
    found = {(f["stage"], f["key"]): f["reason"] for f in stale(result)}
    assert found[("markdown", markdown.stem)] == "output edited since it was built"
    assert found[("conversations", markdown.stem)] == "input changed: markdown"  # with old and new digests
    for stage in ("dataset", "upload", "train", "package", "deploy", "report"):
        assert str(found[(stage, stage)]).startswith("upstream:"), stage
    human = check(clone)
    assert human.returncode == 1 and "markdown: 1" in human.stdout and markdown.name in human.stdout


def test_a_changed_prompt_names_every_conversation_and_the_key(clone: Path) -> None:
    config = clone / "pvbuild.toml"
    config.write_text(config.read_text(encoding="utf-8").replace('plugin = "openai"', 'plugin = "openai"\n'
                                                                 'prompt = "新的提示词"'), encoding="utf-8")
    result = check(clone, "--json")
    assert result.returncode == 1
    conversations = [f for f in stale(result) if f["stage"] == "conversations"]
    assert len(conversations) == 12
    assert all(f["reason"] == "input changed: annotator" for f in conversations)
    change = conversations[0]["changes"][0]  # type: ignore[index]
    assert change["input"] == "annotator" and change["keys"] == ["options.prompt"] and change["old"] != change["new"]
    assert not [f for f in stale(result) if f["stage"] == "markdown"]


def test_a_deleted_url_row_reports_its_outputs_as_orphans(clone: Path) -> None:
    table = clone / "artifacts/test/urls.csv"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    table.write_text("".join(lines[:2] + lines[3:]), encoding="utf-8")
    result = check(clone, "--json")
    assert result.returncode == 1
    orphans = {(f["stage"], f["output"]) for f in stale(result) if str(f["reason"]).startswith("orphan")}
    assert {stage for stage, _ in orphans} == {"markdown", "conversations"} and len(orphans) == 2


def test_a_corrupt_state_file_exits_2_naming_it(clone: Path) -> None:
    (clone / "artifacts/test/.state/markdown.json").write_text("{not json", encoding="utf-8")
    result = check(clone)
    assert result.returncode == 2
    assert "markdown.json" in result.stderr and "delete it" in result.stderr


def test_a_bad_config_exits_2(clone: Path) -> None:
    (clone / "pvbuild.toml").write_text("[profile.test]\nartifact = 'x'\n", encoding="utf-8")
    result = check(clone)
    assert result.returncode == 2 and "profile.test.artifact" in result.stderr


def test_remote_finds_an_object_deleted_from_s3(example: Path, moto: Moto) -> None:
    assert check(example, "--remote").returncode == 0
    marker = json.loads((example / "artifacts/test/upload.json").read_text(encoding="utf-8"))
    victim = marker["objects"][0]
    moto.client("s3").delete_object(Bucket="pv-bucket", Key=victim["key"])
    result = check(example, "--remote")
    assert result.returncode == 1 and f"{victim['uri']} missing" in result.stdout
    assert check(example).returncode == 0  # without --remote, nothing is asked of the store


def test_no_credential_reaches_any_file(example: Path) -> None:
    from tests.aws import FAKE_CREDENTIALS

    secrets = [FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], "sk-test-check"]
    for path in example.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path


def test_an_unwritable_cache_does_not_change_the_answer(clone: Path) -> None:
    (clone / ".pvbuild").write_text("a file where pvbuild keeps its machine-local cache", encoding="utf-8")
    result = check(clone)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unreadable_artifact_exits_2_naming_it(clone: Path) -> None:
    markdown = next((clone / "artifacts/test/markdown").glob("*.md"))
    markdown.unlink()
    markdown.mkdir()
    result = check(clone)
    assert result.returncode == 2
    assert markdown.name in result.stderr and "it should be a file" in result.stderr


def test_an_unreadable_url_table_exits_2_naming_it(clone: Path) -> None:
    table = clone / "artifacts/test/urls.csv"
    table.unlink()
    table.mkdir()
    result = check(clone)
    assert result.returncode == 2 and "urls.csv" in result.stderr, result.stderr


def test_a_fresh_clone_checked_with_hashing_workers_finds_an_edited_conversation(clone: Path) -> None:
    conversation = sorted((clone / "artifacts/test/conversations").iterdir())[2]
    conversation.write_bytes(conversation.read_bytes() + b"\n")
    workspace = Workspace(load_config(clone, "test"))
    assert not workspace.hasher.entries, "a fresh clone has no stat cache"
    artifacts = workspace.config.artifacts
    prehash(workspace.hasher, [artifacts / "markdown", artifacts / "conversations", artifacts / "dataset"],
            min_files=1)
    assert workspace.hasher.pending
    findings = {(finding.stage, finding.key): finding.reason for finding in check_stale(workspace)}
    assert findings[("conversations", conversation.stem)] == "output edited since it was built"
    assert all(key == stage for stage, key in findings if stage != "conversations"), findings
    assert not workspace.elsewhere, "no pass is left running elsewhere"


def test_a_cached_tree_checked_with_stat_workers_finds_an_edited_conversation(clone: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pvbuild.engine.prehash import Prestat
    from pvbuild.stages.catalog import open_workspace, up_to
    from tests.test_prehash import children

    assert check(clone).returncode == 0, "the first check leaves a stat cache"
    conversation = sorted((clone / "artifacts/test/conversations").iterdir())[1]
    conversation.write_bytes(conversation.read_bytes() + b"\n")
    before = children()
    monkeypatch.setenv("PVBUILD_FORK_MIN_FILES", "1")
    workspace = open_workspace(load_config(clone, "test"), up_to("data"))
    assert [type(waiting.work) for waiting in workspace.hasher.pending] == [Prestat, Prestat], \
        "a worker for markdown/ and one for conversations/, none for dataset/"
    findings = {(finding.stage, finding.key): finding.reason for finding in check_stale(workspace, "data")}
    assert findings[("conversations", conversation.stem)] == "output edited since it was built"
    assert all(key == stage for stage, key in findings if stage != "conversations"), findings
    assert not workspace.hasher.pending and children() == before, "taken, and the workers reaped"


def test_a_fresh_clone_with_the_url_table_parsed_elsewhere_finds_a_changed_row(clone: Path) -> None:
    from tests.test_prehash import children

    table = clone / "artifacts/test/urls.csv"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    title, rest = lines[2].split(",", 1)
    table.write_text("".join([*lines[:2], f"{title}（修订）,{rest}", *lines[3:]]), encoding="utf-8")
    before = children()
    workspace = Workspace(load_config(clone, "test"))
    assert workspace.read_table_elsewhere(min_bytes=1), "a fresh clone: no machine-local copy of the table"
    findings = {(finding.stage, finding.key): finding.reason for finding in check_stale(workspace)}
    changed = workspace.rows()[1].file_id
    assert findings[("markdown", changed)] == "input changed: row"
    assert children() == before, "the parsing process is reaped"
    again = Workspace(load_config(clone, "test"))  # the parsed table was kept as the machine-local copy
    assert not again.read_table_elsewhere(min_bytes=1) and again.rows() == workspace.rows()


def test_a_fresh_clone_shares_its_passes_and_finds_an_edited_conversation(clone: Path) -> None:
    """The last per-article stage is examined in a forked process; what it finds stale is examined and
    reported here, with everything downstream, as in one process."""
    from tests.test_prehash import children

    conversation = sorted((clone / "artifacts/test/conversations").iterdir())[2]
    conversation.write_bytes(conversation.read_bytes() + b"\n")
    before = children()
    workspace = Workspace(load_config(clone, "test"))
    assert workspace.read_table_elsewhere(min_bytes=1)
    findings = {(finding.stage, finding.key): finding.reason for finding in check_stale(workspace)}
    assert findings[("conversations", conversation.stem)] == "output edited since it was built"
    assert ("dataset", "dataset") in findings
    assert not workspace.elsewhere and children() == before, "the forked pass was taken and reaped"
    assert findings == {(finding.stage, finding.key): finding.reason
                        for finding in check_stale(Workspace(load_config(clone, "test")))}


def test_a_pass_made_elsewhere_answers_for_the_stage(clone: Path) -> None:
    """``examine_elsewhere``: a child's "up to date" is taken with its item count; where the child finds
    anything stale, the pass is made again here, which names it."""
    from pvbuild.engine import staleness
    from pvbuild.stages.conversations import STAGE
    from tests.test_prehash import children

    before = children()
    workspace = Workspace(load_config(clone, "test"))
    workspace.rows()
    staleness.examine_elsewhere(workspace, STAGE)
    assert staleness.stale(workspace, STAGE) == [] and not workspace.elsewhere
    conversations = sorted((clone / "artifacts/test/conversations").iterdir())
    assert workspace.item_counts["conversations"] == len(conversations)
    conversations[2].write_bytes(conversations[2].read_bytes() + b"\n")
    workspace = Workspace(load_config(clone, "test"))
    workspace.rows()
    staleness.examine_elsewhere(workspace, STAGE)
    assert [entry.item.key for entry in staleness.stale(workspace, STAGE)] == [conversations[2].stem]
    assert children() == before


def test_a_malformed_url_table_parsed_elsewhere_is_named_by_this_process(clone: Path) -> None:
    table = clone / "artifacts/test/urls.csv"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    table.write_text("".join([*lines[:3], lines[3].rsplit(",", 1)[0] + ",\n", *lines[4:]]), encoding="utf-8")
    workspace = Workspace(load_config(clone, "test"))
    assert workspace.read_table_elsewhere(min_bytes=1)
    with pytest.raises(PvbuildError, match=r"urls\.csv:4: empty source"):
        workspace.rows()


def test_a_tree_without_git_or_cache_reads_the_dataset_by_its_check_digests(clone: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither git nor a stat cache vouches for the dataset's files: the check reads them by the check
    digests their record keeps (xxh3), not by SHA-256 in the digesting workers, and finds a changed byte."""
    from pvbuild.engine.hasher import CHECKED
    from pvbuild.stages import dataset
    from pvbuild.stages.catalog import open_workspace, up_to

    shutil.rmtree(clone / ".git")
    files = json.loads((clone / "artifacts/test/.state/dataset.json").read_text(encoding="utf-8"))["dataset"]["files"]
    assert files and all(len(entry["check"]) == 32 for entry in files.values()), files
    assert check(clone).returncode == 0, "up to date by the check digests"
    shutil.rmtree(clone / ".pvbuild")  # no stat cache again
    name = next(name for name in sorted(files) if name.endswith(".jsonl"))
    shard = clone / "artifacts/test/dataset" / name
    edited = bytearray(shard.read_bytes())
    edited[-2:-1] = b" "  # the last line's closing brace: the same size
    shard.write_bytes(bytes(edited))
    monkeypatch.setenv("PVBUILD_FORK_MIN_FILES", "1")
    workspace = open_workspace(load_config(clone, "test"), up_to("data"))
    assert dataset.STAGE.self_checked(workspace)
    findings = {(finding.stage, finding.key): finding.reason for finding in check_stale(workspace, "data")}
    assert f"dataset file {name} missing or edited" in findings[("dataset", "dataset")], findings
    read = {key for key in workspace.hasher.entries if "/dataset/" in key}
    assert read and all(key.startswith(CHECKED) or key.endswith("/manifest.json") for key in read), \
        "the dataset's files read by check digests only (its manifest is the stage's output)"
