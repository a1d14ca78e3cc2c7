"""The CI gate a project copies (``docs/pvbuild-check.yml``): a valid GitHub Actions workflow, and its
steps work on a fresh virtual environment with pvbuild's core alone (no crawl4ai, torch or boto3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / "docs" / "pvbuild-check.yml"
LANDED = Path(__file__).parent / "fixtures" / "landed-0.1" / "artifacts"


def test_the_workflow_is_valid_for_github_actions() -> None:
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["jobs"]["check"]["steps"][1]["with"]["cache"] == "pip"


def test_the_idle_teardown_workflow_is_valid_and_runs_teardown_idle() -> None:
    idle = ROOT / "docs" / "pvbuild-idle.yml"
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(idle)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    workflow = yaml.safe_load(idle.read_text(encoding="utf-8"))
    assert workflow["permissions"] == {"contents": "read", "id-token": "write"}
    assert workflow[True]["schedule"][0]["cron"]  # YAML reads the key "on" as True
    runs = [step.get("run", "") for step in workflow["jobs"]["teardown-idle"]["steps"]]
    assert any("pvbuild teardown --idle" in run for run in runs) and "[aws]" in workflow["env"]["PVBUILD"]


def test_its_steps_run_on_the_core_install(tmp_path: Path) -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    steps = {step.get("name"): step["run"] for step in workflow["jobs"]["check"]["steps"] if "run" in step}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    project = tmp_path / "project"
    shutil.copytree(LANDED, project / "artifacts")
    summary = tmp_path / "summary.md"
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
           "PVBUILD": str(ROOT), "PROFILE": "default", "GITHUB_STEP_SUMMARY": str(summary)}
    env.pop("PYTHONPATH", None)
    install = subprocess.run(["bash", "-e", "-c", steps["Install pvbuild (core) and the project's plugins"]],
                             cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list"], capture_output=True, text=True).stdout
    assert "pluggy" in listed and "crawl4ai" not in listed and "torch" not in listed and "boto3" not in listed
    check = subprocess.run(["bash", "-e", "-c", steps["pvbuild check"]], cwd=project, env=env, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 1, check.stdout + check.stderr  # the fixture's endpoint was torn down
    table = summary.read_text(encoding="utf-8")
    assert "1 stale artifact(s)" in table and "| deploy | `artifacts/default/endpoint.json` |" in table
