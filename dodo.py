"""doit entry point: `doit` builds every stale artifact of the selected profile.

Choose the profile with `doit profile=production` or PVBUILD_PROFILE=production.
"""

from pathlib import Path

from pvbuild.tasks import stage_tasks

Path(".pvbuild").mkdir(exist_ok=True)

DOIT_CONFIG = {"default_tasks": ["report"], "dep_file": ".pvbuild/doit.db", "backend": "json",
               "verbosity": 2}

globals().update(stage_tasks())
