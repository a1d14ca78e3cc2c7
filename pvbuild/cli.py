"""The ``pvbuild`` command: ``plugins`` lists plugins as JSON, ``config`` shows a resolved
profile, ``build`` runs the doit task graph (the same as ``doit`` in the project root), ``check``
gates CI, ``plan`` prices the next build, ``diff`` and ``history`` compare builds, ``leaderboard``
ranks the training candidates, ``publish`` pushes the dataset to the Hub, ``prune`` removes
leftovers, ``ask`` queries the deployed endpoint, ``teardown`` deletes it, ``serve`` runs a local
endpoint."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pvbuild import __version__
from pvbuild.engine.outcomes import RETRY_FAILED
from pvbuild.errors import PvbuildError, missing_extra
from pvbuild.plugins import load_plugins
from pvbuild.stages.catalog import CATALOG


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = load_plugins(Path(args.project))
    listing = [plugin.as_json() for plugin in registry.plugins if args.all or plugin.source != "builtin"]
    listing += [{"name": f.name, "path": f.path, "error": f.reason} for f in registry.failures]
    print(json.dumps(listing, indent=2, ensure_ascii=False))
    for failure in registry.failures:
        print(f"warning: {failure}", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from pvbuild.config import load_config

    config = load_config(args.project, args.profile)
    shown = {"profile": config.profile, "config_file": config.config_file,
             "artifacts": str(config.artifacts.relative_to(config.project_dir)),
             "sources": {s.name: dict(s.options) for s in config.sources},
             "annotator": {"plugin": config.annotator.plugin, **config.annotator.options},
             "dataset": dict(config.dataset), "storage": dict(config.storage), "aws": dict(config.aws),
             "training": dict(config.training), "endpoint": dict(config.endpoint), "ask": dict(config.ask)}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    import pvbuild.tasks as tasks

    tasks.reset()
    # doit runs in the project with the profile in the environment (child processes of `-n N` see it);
    # both are put back afterwards, so a caller in the same process (a test, a notebook) is left as it was.
    directory, profile = os.getcwd(), os.environ.get("PVBUILD_PROFILE")
    os.chdir(args.project)
    if args.profile:
        os.environ["PVBUILD_PROFILE"] = args.profile
    retry = os.environ.get(RETRY_FAILED)
    if args.retry_failed:
        os.environ[RETRY_FAILED] = "1"
    try:
        # doit's default output is the sys.stdout of when doit was imported; a caller may have replaced
        # (and closed) it since, as pytest's capture does: write to today's.
        namespace = {**tasks.stage_tasks(), "DOIT_CONFIG": {**tasks.DOIT_CONFIG, "outfile": sys.stdout}}
        return int(DoitMain(ModuleTaskLoader(namespace)).run(list(args.tasks)))
    finally:
        os.chdir(directory)
        for name, value in (("PVBUILD_PROFILE", profile), (RETRY_FAILED, retry)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _workspace(args: argparse.Namespace, live: bool = True) -> Any:
    from pvbuild.config import load_config
    from pvbuild.engine.workspace import Workspace

    return Workspace(load_config(args.project, args.profile), live=live)


def cmd_ask(args: argparse.Namespace) -> int:
    from pvbuild.stages.asking import Asker

    overrides = {key: value for key, value in (("system_prompt", args.system), ("max_new_tokens", args.max_new_tokens),
                                               ("temperature", args.temperature)) if value is not None}
    answer = Asker(_workspace(args), overrides).ask(args.question)
    print(answer)
    if not answer:
        print("pvbuild: the model's answer was empty (it stopped at once)", file=sys.stderr)
    return 0


def cmd_teardown(args: argparse.Namespace) -> int:
    from pvbuild.stages.deploy import teardown

    print(teardown(_workspace(args), idle_only=args.idle))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pvbuild.services.serve import serve

    archive = Path(args.model)
    if not archive.is_file():
        raise PvbuildError(f"{archive}: no such model archive (a model.tar.gz)")
    serve(archive, args.host, args.port, Path(args.work_dir), Path(args.ready_file) if args.ready_file else None,
          idle_seconds=args.idle_seconds, idle_note=Path(args.idle_note) if args.idle_note else None)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pvbuild.check import STALE, UP_TO_DATE, as_json, check, stale_ones, summary
    from pvbuild.config import load_config
    from pvbuild.stages.catalog import open_workspace, up_to

    # Its per-article folders' files statted by workers while the check reads the table and records.
    workspace = open_workspace(load_config(args.project, args.profile), up_to(args.until), live=args.remote)
    findings = check(workspace, args.until)
    _held.append(workspace)  # freed by the process's end, not on the way out of this function (see _held)
    profile = workspace.config.profile
    _print(as_json(findings, profile) if args.json else summary(findings, profile))
    return STALE if stale_ones(findings) else UP_TO_DATE


def cmd_diff(args: argparse.Namespace) -> int:
    from pvbuild.config import load_config
    from pvbuild.diff import compare, metrics_at, table

    config = load_config(args.project, args.profile)
    path = config.artifacts / "report" / "metrics.json"
    old = metrics_at(config.project_dir, path, args.rev)
    new = metrics_at(config.project_dir, path, args.new_rev) if args.new_rev else metrics_at(config.project_dir, path,
                                                                                            None)
    rows = compare(old, new)
    _print(json.dumps(rows, ensure_ascii=False, indent=1) if args.json else
           table(rows, args.rev, args.new_rev or "workspace"))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pvbuild.plan import plan, text

    workspace = _workspace(args, live=False)
    found = plan(workspace)
    _print(json.dumps(asdict(found), ensure_ascii=False, indent=1) if args.json
           else text(found, workspace.config.profile))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from pvbuild.config import load_config
    from pvbuild.files import atomic_write_text
    from pvbuild.history import SIDECAR, as_rows, builds, page, read_from_git, save_sidecar, text

    config = load_config(args.project, args.profile)
    metrics = config.artifacts / "report" / "metrics.json"
    history = builds(config.project_dir, metrics, args.last)
    if metrics.is_file():  # the report's History section shows what this command found
        save_sidecar(config.cache_dir / SIDECAR, history, read_from_git())
    if args.json:
        _print(json.dumps(as_rows(history), ensure_ascii=False, indent=1))
    elif args.html is not None:
        target = Path(args.html or config.cache_dir / "history.html")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, page(history, config.profile))
        _print(f"history of {len(history)} build(s): {target}")
    else:
        _print(text(history))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from pvbuild.check import check, stale_ones
    from pvbuild.publish import local_card, publish, published_files

    workspace = _workspace(args, live=False)
    options = workspace.config.publish
    repo = args.hub or str(options["hub_repo"])
    if not repo:
        raise PvbuildError("pvbuild publish needs a dataset repo: --hub ORG/NAME or publish.hub_repo")
    stale = stale_ones(check(workspace, "dataset"))
    if stale:
        raise PvbuildError(f"the dataset is not up to date ({len(stale)} stale item(s), `pvbuild check --until "
                           "dataset` lists them): run doit data first, so the card describes what is published")
    license_id = args.license or str(options["license"])
    if args.dry_run:
        target = local_card(workspace, repo, license_id, workspace.config.cache_dir / "dataset-card.md")
        files = published_files(workspace.read_artifact(workspace.manifest) or {"files": {}})
        _print(f"would publish {len(files)} file(s) and the card to {repo}: {', '.join(files)}\ncard: {target}")
        return 0
    private = bool(options["private"]) if args.public is None else not args.public
    url = publish(workspace, repo, private, license_id)
    _print(f"published to {repo} ({'private' if private else 'public'}): {url}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pvbuild.diff import shown
    from pvbuild.stages.evaluate import mean_scores

    workspace = _workspace(args, live=False)
    standings = workspace.standings(mean_scores(workspace))
    if args.json:
        _print(json.dumps([asdict(standing) for standing in standings], ensure_ascii=False, indent=1))
        return 0
    columns = ("candidate", "base model", "status", "train loss", "val loss", "perplexity", "chrF", "tokens",
               "trained s", "billed s")
    lines = [columns] + [(("* " if s.selected else "  ") + s.name, s.base_model, s.status)
                         + tuple(shown(value) for value in (s.train_loss, s.validation_loss, s.perplexity, s.chrf,
                                                             s.train_tokens, s.training_seconds, s.billable_seconds))
                         for s in standings]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    _print("\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines) + "\n* served (training.select = validation_loss: the lowest validation "
                                          "loss; or a candidate's name)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from pvbuild.config import load_config
    from pvbuild.stages.catalog import open_workspace, up_to
    from pvbuild.stages.prune import describe, find_leftovers, remove_leftovers

    # open_workspace: a journal it folds has its step's items name their identities first
    workspace = open_workspace(load_config(args.project, args.profile), up_to("prune"), live=False)
    leftovers = find_leftovers(workspace)
    if not args.dry_run:
        remove_leftovers(workspace, leftovers)
    verb = "would remove" if args.dry_run else "removed"
    _print("\n".join(f"{verb} {describe(workspace, leftover)}" for leftover in leftovers)
           or "nothing to prune")
    return 0


def _print(text: str) -> None:
    """Print, and stay quiet when the reader went away (``pvbuild check | head``): the exit code
    still says what was found."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _profile_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--profile", help="profile name (default: $PVBUILD_PROFILE or 'default')")


def _reading_command(commands: Any, name: str, run: Any, about: str, as_json: str) -> argparse.ArgumentParser:
    """A command that reads a profile and prints a table, or JSON with ``--json``."""
    command: argparse.ArgumentParser = commands.add_parser(name, help=about)
    _profile_option(command)
    command.add_argument("--json", action="store_true", help=as_json)
    command.set_defaults(run=run)
    return command


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pvbuild", description=__doc__)
    top.add_argument("--version", action="version", version=f"pvbuild {__version__}")
    top.add_argument("--project", default=".", help="project directory (default: current directory)")
    commands = top.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list loaded plugins as JSON")
    plugins.add_argument("--all", action="store_true", help="include the built-in plugins")
    plugins.set_defaults(run=cmd_plugins)
    config = commands.add_parser("config", help="print the resolved profile as JSON")
    _profile_option(config)
    config.set_defaults(run=cmd_config)
    build = commands.add_parser("build", help="build stale artifacts (same as running doit)")
    _profile_option(build)
    build.add_argument("--retry-failed", action="store_true", help="crawl again the pages that were gone (HTTP "
                       "404, 410), which are otherwise not retried until their URL row or crawler changes")
    build.add_argument("tasks", nargs="*", help="doit options and tasks (default: everything)")
    build.set_defaults(run=cmd_build)
    check = commands.add_parser("check", help="exit 0 if every artifact is up to date, 1 if not (with reasons), "
                                "2 on error; runs nothing")
    _profile_option(check)
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.add_argument("--until", choices=[stage.name for stage in CATALOG], metavar="STAGE",
                       help="check only the steps up to STAGE (e.g. 'data': the dataset and what it is built from)")
    check.add_argument("--remote", action="store_true", help="also verify the store objects, the training job "
                       "and the endpoint (needs the services and their credentials)")
    check.set_defaults(run=cmd_check)
    diff = commands.add_parser("diff", help="what changed in the build's numbers (counts, tokens, losses) since a "
                               "git revision (like dvc metrics diff)")
    _profile_option(diff)
    diff.add_argument("rev", nargs="?", default="HEAD", help="the revision to compare with (default: HEAD)")
    diff.add_argument("new_rev", nargs="?", help="compare with this revision instead of the working tree")
    diff.add_argument("--json", action="store_true", help="print the changed metrics as JSON")
    diff.set_defaults(run=cmd_diff)
    _reading_command(commands, "plan", cmd_plan, "what the next doit would do and what its paid steps would cost, "
                     "before anything is spent", "the plan as JSON")
    history = _reading_command(commands, "history", cmd_history, "the build's numbers over the commits that changed "
                               "them, and what each build changed (from git)", "one object per build")
    history.add_argument("--last", type=int, default=20, help="this many committed builds (default 20)")
    history.add_argument("--html", nargs="?", const="", default=None, metavar="FILE",
                         help="write an HTML page (default .pvbuild/<profile>/history.html)")
    publish = commands.add_parser("publish", help="push the built dataset to the Hugging Face Hub with a dataset card "
                                  "(token: HF_TOKEN)")
    _profile_option(publish)
    publish.add_argument("--hub", help="the dataset repo, ORG/NAME (default: publish.hub_repo)")
    publish.add_argument("--license", help="the card's licence id, e.g. cc-by-4.0 (default: publish.license)")
    publish.add_argument("--public", action="store_true", default=None, help="a public repo (default: private)")
    publish.add_argument("--dry-run", action="store_true", help="write the card locally, list the files, send nothing")
    publish.set_defaults(run=cmd_publish)
    _reading_command(commands, "leaderboard", cmd_leaderboard, "the training candidates by validation loss, the "
                     "served one marked", "one object per candidate")
    prune = commands.add_parser("prune", help="remove orphans (articles no longer in the URL table) and leftovers "
                                "of interrupted builds; doit does it too")
    _profile_option(prune)
    prune.add_argument("--dry-run", "-n", action="store_true", help="list what would be removed, remove nothing")
    prune.set_defaults(run=cmd_prune)
    ask = commands.add_parser("ask", help="ask the deployed endpoint a question")
    _profile_option(ask)
    ask.add_argument("question")
    ask.add_argument("--system", help="system prompt (default: ask.system_prompt)")
    ask.add_argument("--max-new-tokens", type=int, help="default: ask.max_new_tokens")
    ask.add_argument("--temperature", type=float, help="default: ask.temperature")
    ask.set_defaults(run=cmd_ask)
    teardown = commands.add_parser("teardown", help="delete the deployed endpoint (endpoints bill while they run)")
    _profile_option(teardown)
    teardown.add_argument("--idle", action="store_true",
                          help="only if it served no request for endpoint.idle_hours (run it from cron)")
    teardown.set_defaults(run=cmd_teardown)
    serve = commands.add_parser("serve", help="serve a model.tar.gz over HTTP (SageMaker container contract)")
    serve.add_argument("model", help="path to model.tar.gz")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 picks a free port (default: 8080, as SageMaker)")
    serve.add_argument("--work-dir", default=".pvbuild/serve", help="where the archive is unpacked")
    serve.add_argument("--ready-file", help="write {url, pid, model_sha256} here once serving")
    serve.add_argument("--idle-seconds", type=float, default=0.0,
                       help="exit after this long without an invocation (default 0: never)")
    serve.add_argument("--idle-note", help="write {pid, idle_seconds} here when exiting for want of requests")
    serve.set_defaults(run=cmd_serve)
    return top


# What a command ends holding when it is large (check: every article's records, hundreds of MB at
# 100,000 articles): kept referenced until ``run`` ends the process at once. Freed object by object it
# took 0.35-0.4 s at the interpreter's exit, and 0.2 s on the way out of the command's function.
_held: list[Any] = []


def run() -> NoReturn:
    """The ``pvbuild`` command (and ``python -m pvbuild``): ``main``, then the exit. After ``check`` the
    process ends without tearing the interpreter down object by object (0.35-0.4 s of a 4 s check on a
    fresh clone of 100,000 articles), as mypy does: output is flushed and exit handlers run first."""
    code = main()
    if _held:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader gone (``| head``): nothing left to tell it
                stream.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    _held.clear()  # an in-process caller's earlier command: its state is no longer wanted
    args, extra = parser().parse_known_args(argv)
    if extra and args.command != "build":
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    args.tasks = [*extra, *getattr(args, "tasks", [])]  # doit's own options pass through to doit
    try:
        return int(args.run(args))
    except PvbuildError as error:
        print(f"pvbuild: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # exit 2, not Python's 1: for check, 1 means "stale"
        print(f"pvbuild: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pvbuild: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        hint = missing_extra(error)
        if hint is None:
            raise
        print(f"pvbuild: error: {hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
