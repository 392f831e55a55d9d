"""The policy protocol: what every allocation strategy, heuristic or MILP, implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import pandas as pd

from nowblock.seam.snapshot import BlockSnapshot


@runtime_checkable
class Policy(Protocol):
    """Anything with a ``name`` and ``schedule(snapshot) -> current_a per session_id``."""

    name: str

    def schedule(self, snapshot: BlockSnapshot) -> pd.Series:
        """Setpoints [A] per phase for every car in ``snapshot.cars``, indexed by session_id."""
        ...

