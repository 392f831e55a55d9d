"""Which limit binds each car, and by how much: the answer to "why does my car get so little?".

:func:`binding_limits` takes a snapshot (the block as the policy saw it, caps and
reservations included) and the setpoints the step sent, and names for every car the limit
that stops it from getting more:

``done``
    its (reported or estimated) need is met;
``own_max``
    it is at its own maximum (charger, car, time-window cap, or what it is seen to draw);
``fuse``
    a fuse phase is full (row ``<fuse id>/<phase>``);
``cap``
    a fuse phase lowered by a cap is full, or the charging-power cap (section 14a dimming);
``unbalance``
    the grid connection's phase-unbalance limit (``site.max_unbalance_a``);
``min_current``
    there is room, but less than the car's minimum current (IEC 61851: 0 or at least the
    minimum), so it gets nothing;
``plan``
    nothing binds now: the policy chose less (a cheaper slot later, fairness, hysteresis).

"By how much": ``room_a`` [A] is how much more this car alone could get before the binding
limit (0 when it is full, below one pilot step), ``held_back_a`` [A] how far it is below its
own maximum, and ``slack_a``/``limit_a`` [A] the binding row's room and rating. A pure
function: the live loop, the API and the simulator all call it.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from nowblock.block.site import PHASES
from nowblock.seam import BlockSnapshot, aligned_current_a, constraint_rows

#: Column names of :func:`binding_limits`.
BINDING_COLUMNS = ("binding", "limit", "room_a", "held_back_a", "slack_a", "limit_a")

#: Every kind of binding limit, in the order of the module docstring.
BINDING_KINDS = ("done", "own_max", "fuse", "cap", "unbalance", "min_current", "plan")


def binding_limits(snapshot: BlockSnapshot, current_a, *, capped_fuses: Collection[str] = (),
                   tol_a: float = 1e-6) -> pd.DataFrame:
    """The limit that binds each car of ``snapshot`` at setpoints ``current_a``.

    Parameters
    ----------
    snapshot : BlockSnapshot
        The block as the step saw it (its site carries caps and reservations).
    current_a : Series, dict or array
        [A per phase] Setpoints by session_id (missing: 0).
    capped_fuses : collection of str
        Fuse ids whose rating in ``snapshot.site`` is a cap rather than the fuse itself:
        a full row there is reported as ``cap``.
    tol_a : float
        [A] Numerical tolerance.

    Returns
    -------
    pandas.DataFrame
        Indexed by session_id with :data:`BINDING_COLUMNS`: ``binding`` (one of
        :data:`BINDING_KINDS`), ``limit`` (the row, e.g. ``"feeder-a/L2"``, ``"unbalance"``,
        empty for the car's own limits), ``room_a``, ``held_back_a``, ``slack_a`` and
        ``limit_a`` [A] (NaN where no row is involved).
    """
    cars = snapshot.cars
    n = len(cars)
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("binding", "limit") else float)
                             for c in BINDING_COLUMNS}, index=cars.index)
    x = np.nan_to_num(aligned_current_a(cars.index, current_a), nan=0.0)
    mx = np.nan_to_num(snapshot.values("max_current_a"), nan=0.0)
    mn = np.nan_to_num(snapshot.values("min_current_a"), nan=0.0)
    step = max(float(snapshot.current_step_a), tol_a)
    remaining = snapshot.remaining_kwh
    g, h = constraint_rows(snapshot)
    site = snapshot.site
    n_fuse_rows = 3 * len(site.fuses)
    labels = [f"{site.fuse_ids[r // 3]}/{PHASES[r % 3]}" for r in range(n_fuse_rows)]
    labels += ["unbalance"] * (len(h) - n_fuse_rows)
    kinds = ["cap" if site.fuse_ids[r // 3] in set(capped_fuses) else "fuse" for r in range(n_fuse_rows)]
    kinds += ["unbalance"] * (len(h) - n_fuse_rows)
    limit_rows = np.concatenate([site.limits_a.reshape(-1), h[n_fuse_rows:]]) if len(h) else np.zeros(0)

    if len(h):
        slack = np.maximum(h - g @ x, 0.0)
        # Raising car i by d adds g[r, i] * d to row r; only rows it loads (g > 0) can stop it.
        with np.errstate(divide="ignore", invalid="ignore"):
            room_rows = np.where(g > tol_a, slack[:, None] / np.where(g > tol_a, g, 1.0), np.inf)
        r_star = np.argmin(room_rows, axis=0)
        room_row = room_rows[r_star, np.arange(n)]
    else:
        slack = np.zeros(0)
        r_star = np.zeros(n, dtype=np.int64)
        room_row = np.full(n, np.inf)

    room_max = np.maximum(mx - x, 0.0)
    at_max = room_max < step - tol_a
    row_full = room_row < step - tol_a
    too_little = (x <= tol_a) & (room_row < mn - tol_a) & ~row_full
    done = remaining <= 1e-3

    binding = np.full(n, "plan", dtype=object)
    binding[too_little] = "min_current"
    row_kind = np.array([kinds[r] for r in r_star], dtype=object) if len(h) else binding
    binding[row_full] = row_kind[row_full]
    binding[at_max] = "own_max"
    binding[done] = "done"

    uses_row = np.isin(binding, ("fuse", "cap", "unbalance", "min_current", "plan")) & np.isfinite(room_row)
    limit = np.where(uses_row, np.array([labels[r] for r in r_star] if len(h) else [""] * n, dtype=object), "")
    room = np.where(binding == "own_max", 0.0, np.minimum(room_row, room_max))
    room = np.where(binding == "done", room_max, room)
    out = pd.DataFrame({
        "binding": binding,
        "limit": limit,
        "room_a": np.round(np.where(np.isfinite(room), room, room_max), 3),
        "held_back_a": np.round(room_max, 3),
        "slack_a": np.round(np.where(uses_row, slack[r_star] if len(h) else np.nan, np.nan), 3),
        "limit_a": np.round(np.where(uses_row, limit_rows[r_star] if len(h) else np.nan, np.nan), 3),
    }, index=cars.index)
    return out
