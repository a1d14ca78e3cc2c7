"""The default profile's model half, in-process: upload, train, package, deploy, report, teardown."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvbuild.cli import main
from pvbuild.config import load_config
from pvbuild.engine import staleness
from pvbuild.engine.stage import StaleItem
from pvbuild.engine.workspace import Workspace
from pvbuild.services.processes import process_alive
from pvbuild.stages.asking import Asker
from pvbuild.stages.catalog import stage_named
from tests.conftest import Project
from tests.standins import FixtureSite
from tests.test_diff import git
from tests.test_history import COMMIT

CONFIG = """
[profile.test]
artifacts = "artifacts/test"
[profile.test.training]
base_model = "{model}"
[profile.test.training.hyperparameters]
epoch = 2
"""

FLAKY_PLUGIN = '''
from pathlib import Path

import pvbuild
from pvbuild.builtins.tiny import TINY_HYPERPARAMETERS, build_tiny_model


def build(texts, directory, seed):
    if Path("fail-training").exists():
        raise RuntimeError("GPU fell off the bus")
    build_tiny_model(texts, directory, seed)


@pvbuild.hookimpl
def register_base_models(register):
    register(pvbuild.BaseModel(
        name="flaky", jumpstart_model_id="", jumpstart_model_version="", dataset_format="instruction",
        hyperparameters=TINY_HYPERPARAMETERS, training_instance_types=(), inference_instance_types=(),
        tokenizer="", build_local=build))
'''

def stale(workspace: Workspace, stage: str) -> list[StaleItem]:
    return staleness.stale(workspace, stage_named(stage))



def record(project: Project, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((project.artifacts() / name).read_text(encoding="utf-8"))
    return loaded


def jobs(project: Project) -> list[str]:
    return sorted(path.stem for path in (project.path / ".pvbuild" / "test" / "jobs").glob("*.json"))


def pipeline(project: Project) -> Workspace:
    return Workspace(load_config(project.path, "test"))


@pytest.fixture
def chain(project: Project) -> Iterator[Project]:
    project.config(CONFIG.format(model="tiny"))
    try:
        yield project
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])


def test_the_chain_runs_once_and_then_only_what_changed(chain: Project) -> None:
    assert chain.build_all() == 0
    assert len(jobs(chain)) == 1
    endpoint = record(chain, "endpoint.json")
    assert endpoint["status"] == "InService" and process_alive(endpoint["pid"])
    assert (chain.artifacts() / "report" / "report.html").read_text(encoding="utf-8").count("<dt>") == 3
    assert isinstance(Asker(pipeline(chain)).ask("分布式光伏项目如何申请补贴？"), str)

    assert chain.build_all() == 0  # nothing changed: no job, no redeploy
    assert len(jobs(chain)) == 1 and record(chain, "endpoint.json") == endpoint
    assert all(not stale(pipeline(chain), stage) for stage in ("upload", "train", "package", "deploy", "report"))


def test_a_deleted_object_is_uploaded_again_without_retraining(chain: Project) -> None:
    assert chain.build_all() == 0
    marker = record(chain, "upload.json")
    store = chain.path / ".pvbuild" / "object-store"
    victim = store / marker["objects"][0]["key"]
    victim.unlink()
    assert "not in the store any more" in stale(pipeline(chain), "upload")[0].reason
    assert chain.build_all() == 0
    assert victim.is_file() and record(chain, "upload.json") == marker and len(jobs(chain)) == 1


def test_a_killed_endpoint_is_detected_and_redeployed(chain: Project) -> None:
    assert chain.build_all() == 0
    old = record(chain, "endpoint.json")
    os.kill(old["pid"], signal.SIGKILL)
    os.waitpid(old["pid"], 0)  # the server is this test process's child: reap it
    with pytest.raises(Exception, match="stale pid"):
        Asker(pipeline(chain))
    assert "stale pid" in stale(pipeline(chain), "deploy")[0].reason
    assert chain.build_all() == 0
    new = record(chain, "endpoint.json")
    assert new["pid"] != old["pid"] and new["model_sha256"] == old["model_sha256"] and len(jobs(chain)) == 1
    assert isinstance(Asker(pipeline(chain)).ask("你好"), str)


def test_changed_data_trains_one_new_job_and_replaces_the_endpoint(chain: Project) -> None:
    git(chain.path, "init", "-q")
    assert chain.build_all() == 0
    old = record(chain, "endpoint.json")
    git(chain.path, "add", "artifacts")
    git(chain.path, *COMMIT, "first build")
    for markdown in (chain.artifacts() / "markdown").glob("*.md"):  # some land in training, some in validation
        markdown.write_text(markdown.read_text(encoding="utf-8") + "\n## 新增条款\n\n补贴标准提高到每千瓦时0.1元。\n",
                            encoding="utf-8")
    assert chain.build_all() == 0
    new = record(chain, "endpoint.json")
    assert len(jobs(chain)) == 2
    assert new["model_sha256"] != old["model_sha256"] and new["endpoint_name"] != old["endpoint_name"]
    assert not process_alive(old["pid"]) or pipeline(chain).endpoint_backend().problem(old)  # the old one stopped
    # The report's History section: a script beside the project, which the build wrote from git.
    report = chain.artifacts() / "report" / "report.html"
    source = re.search(r'<script src="([^"]+)"></script>', report.read_text(encoding="utf-8"))
    assert source is not None and source.group(1) == "../../../.pvbuild/test/history.js"
    history = (report.parent / source.group(1)).resolve().read_text(encoding="utf-8")
    assert 'getElementById("pvbuild-history")' in history and "first build" in history
    assert "What the last build changed (" in history and "→ workspace)" in history
    assert "<th>training.train_loss</th>" in history and "data:image/png;base64," in history
    assert main(["--project", str(chain.path), "teardown", "--profile", "test"]) == 0
    assert record(chain, "endpoint.json")["status"] == "Deleted"
    assert "is Deleted" in stale(pipeline(chain), "deploy")[0].reason


def test_a_failed_job_stops_the_chain_and_the_rerun_starts_a_new_one(project: Project) -> None:
    project.config(CONFIG.format(model="flaky"))
    (project.path / "plugins" / "flaky.py").write_text(FLAKY_PLUGIN, encoding="utf-8")
    (project.path / "fail-training").touch()
    try:
        assert project.build_all() != 0
        failed = record(project, "training.json")
        assert failed["status"] == "Failed" and "GPU fell off the bus" in failed["failure_reason"]
        assert not (project.artifacts() / "model.json").exists()
        assert not (project.artifacts() / "endpoint.json").exists()
        assert "GPU fell off the bus" in stale(pipeline(project), "train")[0].reason

        (project.path / "fail-training").unlink()
        assert project.build_all() == 0
        done = record(project, "training.json")
        assert done["status"] == "Completed" and done["attempt"] == 2 and done["job_name"].endswith("-2")
        assert done["input_digest"] == failed["input_digest"] and len(jobs(project)) == 2
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])


def test_compile_true_without_a_gpu_fails_the_job_with_the_fix_and_is_no_input_of_it(project: Project) -> None:
    """``training.compile`` says how the job runs, not what it makes: true on the CPU fails the job naming the
    fix, and once trained, switching it on or off leaves the job as it is."""
    with_compile = CONFIG.format(model="tiny").replace("[profile.test.training]\n",
                                                       '[profile.test.training]\ndevice = "cpu"\ncompile = {}\n')
    project.config(with_compile.format("true"))
    try:
        assert project.build_all() != 0
        failed = record(project, "training.json")
        assert failed["status"] == "Failed"
        assert 'training.compile = true needs one CUDA GPU' in failed["failure_reason"]
        assert 'set it to "auto" or false' in failed["failure_reason"]
        assert not (project.artifacts() / "model.json").exists()

        project.config(with_compile.format('"auto"'))
        assert project.build_all() == 0
        assert record(project, "training.json")["status"] == "Completed" and len(jobs(project)) == 2
        for setting in ("false", "true"):
            project.config(with_compile.format(setting))
            assert not stale(pipeline(project), "train")
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])


def test_any_local_hugging_face_directory_trains_with_lora(project: Project, tiny_base: Path) -> None:
    project.config(f"""
[profile.test]
artifacts = "artifacts/test"
[profile.test.training]
base_model = "llama-3.2-1b-instruct"
model_path = "{tiny_base}"
lora = true
hyperparameters = {{ epoch = 1, max_input_length = 128 }}
""")
    assert project.build("train") == 0
    done = record(project, "training.json")
    assert done["status"] == "Completed" and done["base_model"]["name"] == "llama-3.2-1b-instruct"
    assert done["hyperparameters"]["lora_r"] == "8" and done["hyperparameters"]["instruction_tuned"] == "True"
    model_dir = project.path / ".pvbuild/object-store" / done["model_artifacts"].removeprefix("local://")
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()


def test_training_in_two_processes_writes_one_record_and_one_model(project: Project) -> None:
    """The multi-GPU path (accelerate's launcher, one process a GPU), run with two CPU processes."""
    project.config(CONFIG.format(model="tiny").replace("[profile.test.training]\n",
                                                       '[profile.test.training]\ngpus = 2\ndevice = "cpu"\n'))
    try:
        assert project.build_all() == 0
        training = record(project, "training.json")
        assert training["status"] == "Completed" and len(jobs(project)) == 1
        assert training["metrics"]["processes"] == 2
        assert training["metrics"]["global_batch_size"] == 2 * int(training["hyperparameters"][
            "per_device_train_batch_size"])
        store = project.path / ".pvbuild" / "object-store"
        models = sorted(path.relative_to(store) for path in store.rglob("model.safetensors"))
        assert len(models) == 1, models
        assert (project.path / ".pvbuild" / "test" / "training.log").is_file()
        assert isinstance(Asker(pipeline(project)).ask("分布式光伏项目如何申请补贴？"), str)
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])


def test_an_idle_local_endpoint_exits_and_the_next_build_starts_it_again(project: Project) -> None:
    project.config(CONFIG.format(model="tiny") + "[profile.test.endpoint]\nidle_hours = 0.001\n")  # 3.6 s
    try:
        assert project.build_all() == 0
        first = record(project, "endpoint.json")
        assert first["status"] == "InService"
        deadline = time.monotonic() + 60
        while process_alive(first["pid"]) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(first["pid"], os.WNOHANG)  # the server is this test process's child: reap it
            time.sleep(0.2)
        assert not process_alive(first["pid"]), "the endpoint stopped on its own"
        reasons = [entry.reason for entry in stale(pipeline(project), "deploy")]
        assert reasons == [f"endpoint {first['endpoint_name']}: stopped after 0.001 h without a request "
                           "(endpoint.idle_hours); the next doit starts it again"]
        assert project.build_all() == 0
        again = record(project, "endpoint.json")
        assert again["status"] == "InService" and process_alive(again["pid"]) and again["pid"] != first["pid"]
        assert len(jobs(project)) == 1, "nothing retrained"
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])


def test_a_dead_link_within_max_failed_lets_the_chain_finish(project: Project, site: FixtureSite,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture site lists one article that answers 404 (1455400)."""
    text = CONFIG.format(model="tiny") + (f'[profile.test.sources.bjx]\nlist_url = "{site.url}/zc/{{page}}"\n'
                                         "first_page = 1\nlast_page = 2\nretries = 0\n")
    project.config(text)
    assert project.build_all() != 0, "by default a failed article stops the model half"
    assert not (project.artifacts() / "training.json").exists()
    project.config(text + "[profile.test.dataset]\nmax_failed = 1\n")
    try:
        assert project.build_all() == 0
        assert record(project, "training.json")["status"] == "Completed"
        err = capsys.readouterr().err
        assert "failed for good, not retried until its URL row or crawler changes" in err
        assert "1455400" in err and "HTTP 404" in err
        report = (project.artifacts() / "report" / "report.html").read_text(encoding="utf-8")
        assert "Left out after failing (1, within dataset.max_failed)" in report and "1455400" in report
        assert "HTTP 404" in report
        assert main(["--project", str(project.path), "check", "--profile", "test", "--json"]) == 0
        found = json.loads(capsys.readouterr().out)
        assert found["up_to_date"] is True and found["stale"] == []
        assert [(f["stage"], f["key"]) for f in found["failed_allowed"]] == [("markdown", "1455400")]
        capsys.readouterr()
        assert main(["--project", str(project.path), "check", "--profile", "test"]) == 0
        human = capsys.readouterr().out
        assert "every artifact is up to date" in human and "failed, and allowed by dataset.max_failed (1):" in human
    finally:
        main(["--project", str(project.path), "teardown", "--profile", "test"])
