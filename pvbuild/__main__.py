"""``python -m pvbuild`` is the ``pvbuild`` command."""

import sys

from pvbuild.cli import main

sys.exit(main())
