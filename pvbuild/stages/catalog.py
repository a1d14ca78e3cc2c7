"""The build graph: every stage in the order doit runs them, each depending on the one before.
Adding a stage is one module in this package and one line here."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from pvbuild.config import Config
from pvbuild.engine.prehash import prestat
from pvbuild.engine.stage import Stage
from pvbuild.engine.workspace import STAT_CACHE, Workspace
from pvbuild.errors import PvbuildError
from pvbuild.stages import (
    conversations,
    dataset,
    deploy,
    evaluate,
    gate,
    markdown,
    package,
    prune,
    report,
    train,
    upload,
    urls,
)

CATALOG: tuple[Stage, ...] = (
    urls.STAGE,           # list pages -> urls.csv
    prune.STAGE,          # orphans and leftovers of interrupted builds removed
    markdown.STAGE,       # article pages -> markdown/<file_id>.md
    conversations.STAGE,  # markdown -> conversations/<file_id>.csv (the annotator)
    dataset.STAGE,        # conversations -> dataset/ (JSONL, template, Arrow)
    gate.STAGE,           # "data": no model half on incomplete data
    upload.STAGE,         # dataset -> object store, upload.json
    train.STAGE,          # -> training.json (one job per distinct inputs)
    package.STAGE,        # job output -> model.tar.gz, model.json
    evaluate.STAGE,       # held-out questions -> evaluation/ (with evaluation.questions)
    deploy.STAGE,         # -> endpoint.json
    report.STAGE,         # -> report/
)


def stage_named(name: str, catalog: tuple[Stage, ...] = CATALOG) -> Stage:
    return next(stage for stage in catalog if stage.name == name)


def up_to(name: str | None, catalog: tuple[Stage, ...] = CATALOG) -> tuple[Stage, ...]:
    """The stages up to and including ``name`` (all of them for None)."""
    if name is None:
        return catalog
    names = [stage.name for stage in catalog]
    return catalog[:names.index(name) + 1]


def written_folders(config: Config, stages: tuple[Stage, ...], per_file: bool = False) -> list[Path]:
    """The folders that ``stages`` write into (markdown/, conversations/, dataset/), in the stages' order;
    ``per_file``: only those written one file per item (markdown/, conversations/)."""
    return [config.artifacts / path.removesuffix("*") for stage in stages for path in stage.writes or ()
            if path.endswith("/*" if per_file else ("/", "/*"))]


def open_workspace(config: Config, stages: tuple[Stage, ...] = CATALOG, live: bool = True) -> Workspace:
    """A workspace for the passes over ``stages``, with the files of their per-article folders statted by
    worker processes meanwhile (``engine.prehash.prestat``: forked before the workspace reads its stat cache)."""
    # The folders of one file per article: a dataset's hundred files are not worth a process.
    looking = prestat(config.cache_dir / STAT_CACHE, config.project_dir, written_folders(config, stages, True))
    try:
        workspace = Workspace(config, live=live)
    except BaseException:
        for worker in looking:  # no workspace to take their answers: none is left running
            worker.stop()
        raise
    for worker in looking:
        workspace.hasher.wait_for(worker)
    workspace.name_identities = functools.partial(name_identities, workspace)
    return workspace


def name_identities(workspace: Workspace, stages: set[str]) -> None:
    """Compute the items of ``stages`` (``prune`` is folding their journals in), so that the workspace knows
    the identities they name (``Workspace.identity``) when identities.json is settled: a killed run's
    records may name identities it had not saved yet (``Workspace.name_identities``)."""
    for name in sorted(stages):
        with contextlib.suppress(PvbuildError, StopIteration):  # items that cannot be computed now name none
            stage_named(name).items(workspace)
