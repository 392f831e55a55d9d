"""``python -m nowblock.cli``: the ``nowblock`` command."""

import sys

from nowblock.cli import main

sys.exit(main())
