"""Adding a stage is one module and one catalog line: the README's toy stage, built by doit from a
catalog with one more line, and checked by ``pvbuild check`` through the same catalog."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from types import ModuleType

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

import pvbuild.tasks as tasks
from pvbuild.check import check
from pvbuild.config import load_config
from pvbuild.engine.stage import Stage
from pvbuild.engine.workspace import Workspace
from pvbuild.stages.catalog import CATALOG, stage_named
from tests.conftest import ROOT, Project


def readme_stage(directory: Path) -> ModuleType:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme.split("## Adding a stage", 1)[1], re.S)
    assert code is not None
    path = directory / "wordcount.py"
    path.write_text(code.group(1), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("wordcount", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(catalog: tuple[Stage, ...]) -> int:
    """doit on the catalog, as ``dodo.py`` runs it (in the current directory)."""
    tasks.reset()
    namespace = {**tasks.stage_tasks(catalog), "DOIT_CONFIG": {**tasks.DOIT_CONFIG, "default_tasks": ["wordcount"]}}
    return int(DoitMain(ModuleTaskLoader(namespace)).run([]))


def answer_characters(project: Project) -> int:
    lines = (project.artifacts("default") / "dataset" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return sum(len(json.loads(line)["answer"]) for line in lines)


def test_a_toy_stage_is_one_module_and_one_catalog_line(project: Project, tmp_path: Path) -> None:
    toy = readme_stage(tmp_path)
    index = CATALOG.index(stage_named("dataset")) + 1
    catalog = (*CATALOG[:index], toy.STAGE)  # the one line, after dataset.STAGE
    os.chdir(project.path)
    assert build(catalog) == 0
    counted = json.loads((project.artifacts("default") / "wordcount.json").read_text(encoding="utf-8"))
    assert counted["answer_characters"] == answer_characters(project) > 100
    workspace = Workspace(load_config(project.path))
    assert check(workspace, catalog=catalog) == []

    for conversation in (project.artifacts("default") / "conversations").glob("*.csv"):  # train split too
        conversation.write_text(conversation.read_text(encoding="utf-8") + "user,还有吗？\nassistant,没有了。\n",
                                encoding="utf-8")
    findings = {finding.stage: finding.reason for finding in check(Workspace(load_config(project.path)),
                                                                    catalog=catalog)}
    assert findings["wordcount"] == "upstream: dataset is stale"
    assert build(catalog) == 0
    recounted = json.loads((project.artifacts("default") / "wordcount.json").read_text(encoding="utf-8"))
    assert recounted["answer_characters"] == answer_characters(project) > counted["answer_characters"]
    assert check(Workspace(load_config(project.path)), catalog=catalog) == []
