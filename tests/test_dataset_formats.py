"""Dataset formats are plugins: a project-local file adds one, ``dataset.format`` selects it, the
dataset holds its files and the upload sends them on its channels."""

from __future__ import annotations

import json

from pvbuild.cli import main
from tests.conftest import Project

QA_FORMAT = '''
import json

import pvbuild
from pvbuild.plugin_types import DatasetFormat


def write(train, validation, options):
    def lines(dialogues):
        return "".join(json.dumps({"q": q, "a": a}, ensure_ascii=False) + "\\n"
                       for dialogue in dialogues for q, a in dialogue.pairs())
    return {"qa.jsonl": lines(train), **({"qa_validation.jsonl": lines(validation)} if validation else {})}


@pvbuild.hookimpl
def register_dataset_formats(register):
    register(DatasetFormat("qa", "qa_tuned", {"training": ("qa.jsonl",), "validation": ("qa_validation.jsonl",)},
                           write, "question/answer lines"))
'''


def test_a_plugin_format_is_built_and_uploaded_on_its_channels(project: Project) -> None:
    (project.path / "plugins" / "qa_format.py").write_text(QA_FORMAT, encoding="utf-8")
    project.config('[profile.test]\nartifacts = "artifacts/test"\n[profile.test.dataset]\nformat = "qa"\n')
    assert project.build("upload") == 0
    lines = (project.artifacts() / "dataset" / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines and set(json.loads(lines[0])) == {"q", "a"}
    marker = json.loads((project.artifacts() / "upload.json").read_text(encoding="utf-8"))
    assert marker["format"] == "qa"
    assert {entry["key"].rsplit("/", 1)[-1] for entry in marker["objects"]} == {"qa.jsonl", "qa_validation.jsonl"}


def test_a_misspelled_format_says_did_you_mean(project: Project) -> None:
    project.config('[profile.test]\nartifacts = "artifacts/test"\n[profile.test.dataset]\nformat = "chta"\n')
    assert main(["--project", str(project.path), "check", "--profile", "test"]) == 2
