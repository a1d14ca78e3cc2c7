"""The ``pvbuild`` command: ``plugins`` lists plugins as JSON, ``config`` shows a resolved
profile, ``build`` runs the doit task graph (the same as ``doit`` in the project root)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pvbuild.errors import PvbuildError
from pvbuild.plugins import load_plugins


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
             "dataset": dict(config.dataset)}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    import os

    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    import pvbuild.tasks as tasks

    tasks.reset()
    os.chdir(args.project)
    if args.profile:
        os.environ["PVBUILD_PROFILE"] = args.profile
    namespace = {**tasks.stage_tasks(), "DOIT_CONFIG": tasks.DOIT_CONFIG}
    return int(DoitMain(ModuleTaskLoader(namespace)).run(list(args.tasks)))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pvbuild", description=__doc__)
    top.add_argument("--project", default=".", help="project directory (default: current directory)")
    commands = top.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list loaded plugins as JSON")
    plugins.add_argument("--all", action="store_true", help="include the built-in plugins")
    plugins.set_defaults(run=cmd_plugins)
    config = commands.add_parser("config", help="print the resolved profile as JSON")
    config.add_argument("--profile", help="profile name (default: $PVBUILD_PROFILE or 'default')")
    config.set_defaults(run=cmd_config)
    build = commands.add_parser("build", help="build stale artifacts (same as running doit)")
    build.add_argument("--profile", help="profile name (default: $PVBUILD_PROFILE or 'default')")
    build.add_argument("tasks", nargs="*", help="doit options and tasks (default: everything)")
    build.set_defaults(run=cmd_build)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if extra and args.command != "build":
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    args.tasks = [*extra, *getattr(args, "tasks", [])]  # doit's own options pass through to doit
    try:
        return int(args.run(args))
    except PvbuildError as error:
        print(f"pvbuild: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
