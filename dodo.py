"""doit entry point: `doit` builds every stale artifact of the selected profile.

Choose the profile with `doit profile=production` or PVBUILD_PROFILE=production.
"""

from pvbuild.tasks import DOIT_CONFIG, stage_tasks  # noqa: F401 - doit reads DOIT_CONFIG from here

globals().update(stage_tasks())
