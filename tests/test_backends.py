"""A third training and endpoint backend is a plugin: a project-local file registers it, the
configuration selects it by name, and the chain trains, packs and deploys through it — pvbuild's
own files untouched."""

from __future__ import annotations

import json

from pvbuild.cli import main
from tests.conftest import Project

FAKE_CLOUD = '''
"""A fake cloud: jobs finish at once with a one-file model; endpoints are records."""
import tempfile
from pathlib import Path

import pvbuild
from pvbuild.services.training import JobState, JobStatus



def log(context, line):
    with (context.project_dir / "fake-cloud-calls.txt").open("a") as stream:
        stream.write(line + "\\n")


class Training:
    def __init__(self, context):
        self.context, self.store, self.jobs = context, context.store, {}

    def describe(self, name):
        return self.jobs.get(name)

    def create(self, request):
        log(self.context, f"create {request.job_name} epoch={request.hyperparameters['epoch']}")
        self.jobs[request.job_name] = JobState(request.job_name, JobStatus.IN_PROGRESS)
        return self.jobs[request.job_name]

    def wait(self, request, on_update):
        key = f"{request.output_key}/{request.job_name}/output/model"
        with tempfile.TemporaryDirectory() as scratch:
            weights = Path(scratch) / "weights.bin"
            weights.write_bytes(request.job_name.encode())
            self.store.put(f"{key}/weights.bin", weights)
        state = JobState(request.job_name, JobStatus.COMPLETED, model_artifacts=self.store.uri(key + "/"))
        self.jobs[request.job_name] = state
        return state


class Endpoints:
    def __init__(self, context):
        self.context = context

    def deploy(self, request, started):
        log(self.context, f"deploy {request.name} {request.model['sha256'][:12]}")
        record = {"backend": "fakecloud", "endpoint_name": request.name, "model_sha256": request.model["sha256"],
                  "status": "InService", "instance_type": request.instance_type or "fake.small"}
        started({**record, "status": "Creating"})
        return record

    def problem(self, record):
        return None

    def invoke(self, record, payload):
        return [{"generated_text": "fake answer"}]

    def delete(self, record):
        log(self.context, f"delete {record['endpoint_name']}")
        return {**record, "status": "Deleted"}


@pvbuild.hookimpl
def register_backends(register):
    register(pvbuild.Backend("training", "fakecloud", Training, "jobs that finish at once"))
    register(pvbuild.Backend("endpoint", "fakecloud", Endpoints, "endpoints that are records"))
'''

CONFIG = """
[profile.test]
artifacts = "artifacts/test"
[profile.test.training]
backend = "fakecloud"
base_model = "tiny"
hyperparameters = { epoch = 3 }
[profile.test.endpoint]
backend = "fakecloud"
"""


def calls(project: Project) -> list[str]:
    path = project.path / "fake-cloud-calls.txt"
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def test_a_plugin_backend_trains_packs_and_deploys(project: Project) -> None:
    (project.path / "plugins" / "fake_cloud.py").write_text(FAKE_CLOUD, encoding="utf-8")
    project.config(CONFIG)
    assert project.build("deploy") == 0
    assert [line.split()[0] for line in calls(project)] == ["create", "deploy"]
    assert "epoch=3" in calls(project)[0]
    training = json.loads((project.artifacts() / "training.json").read_text(encoding="utf-8"))
    endpoint = json.loads((project.artifacts() / "endpoint.json").read_text(encoding="utf-8"))
    assert training["backend"] == "fakecloud" and training["status"] == "Completed"
    assert endpoint["backend"] == "fakecloud" and endpoint["endpoint_name"] == training["job_name"]
    assert project.build("deploy") == 0 and len(calls(project)) == 2  # up to date: no job, no deploy
    assert main(["--project", str(project.path), "teardown", "--profile", "test"]) == 0
    assert calls(project)[-1].startswith("delete")


def test_a_misspelled_backend_says_did_you_mean(project: Project) -> None:
    (project.path / "plugins" / "fake_cloud.py").write_text(FAKE_CLOUD, encoding="utf-8")
    project.config(CONFIG.replace('backend = "fakecloud"\nbase_model', 'backend = "fakeclod"\nbase_model'))
    assert main(["--project", str(project.path), "check", "--profile", "test"]) == 2
