"""The seam between policies and the block they control.

Everything a policy may know arrives in a frozen :class:`BlockSnapshot`; everything it may do
is answer with setpoints, which :func:`make_safe` (the shared safety net) repairs before they
leave. Both the simulator and the live loop build snapshots through :mod:`nowblock.loop`, so
a policy runs unchanged in either. This layer imports only the block's data (:mod:`nowblock.block`).
"""

from nowblock.seam.policy import Decision, Policy, decide
from nowblock.seam.safety import (
    aligned_current_a,
    failsafe_current_a,
    make_safe,
    safe_setpoints_a,
    violation_a,
)
from nowblock.seam.snapshot import (
    CAR_COLUMNS,
    BlockSnapshot,
    cached_constraint_rows,
    constraint_rows,
    root_index,
)

__all__ = [
    "CAR_COLUMNS", "BlockSnapshot", "Decision", "Policy", "decide", "aligned_current_a", "cached_constraint_rows", "constraint_rows",
    "failsafe_current_a", "make_safe", "root_index", "safe_setpoints_a", "violation_a",
]
