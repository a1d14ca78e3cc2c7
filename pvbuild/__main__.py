"""``python -m pvbuild`` is the ``pvbuild`` command."""

from pvbuild.cli import run

run()
