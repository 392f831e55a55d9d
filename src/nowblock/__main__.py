"""``python -m nowblock``: the ``nowblock`` command."""

import sys

from nowblock.cli import main

sys.exit(main())
