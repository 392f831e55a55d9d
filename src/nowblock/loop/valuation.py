"""What the policy is shown of cars that draw less than they are offered.

The MILP values a car by its draw over its offer (``measured_current_a / offered_current_a``,
the draw ratio: a car taking 7 A of 16 A gets 7/16 of the energy per ampere). Two readings of it
made the plan swing a car between an offer and 0 A at every step (an outside test: a car capped at
7 A, 16 <-> 0 A every 10 s step, 21 limit changes in 130 s; after the first change below,
8 <-> 0 A):

* a reading taken before it settled (the offer changed less than ``settle_s`` before it; a car
  that has not ramped up yet) devalued the car at once, while the allocation ceilings wait for a
  settled reading: such a reading is hidden from the policy (NaN), as from the ceilings;
* a car once paused shows no ratio (it draws nothing at 0 A), so it was valued in full again,
  resumed, devalued, paused: a trusted car paused is shown drawing what it last drew while
  offered at least its minimum, at an offer of its allocation ceiling (a ratio at the offer it
  drew at, 7 of 16 A, would undervalue it at a ceiling of 8 A and keep it paused).

:func:`policy_view` builds the policy's snapshot where it differs; the safety net keeps reading
the observed values (:class:`nowblock.loop.step.StepContext`).
"""

from __future__ import annotations

import numpy as np

from nowblock.seam import BlockSnapshot


def policy_view(draws: dict, snap: BlockSnapshot, trusted: np.ndarray, settled: np.ndarray, measured_a: np.ndarray,
                offered_a: np.ndarray, under_draw_a: float) -> BlockSnapshot | None:
    """The policy's snapshot, or None where it is ``snap`` itself (see the module docstring).

    Parameters
    ----------
    draws : dict
        session_id -> [A] what it last drew while offered at least its minimum; kept up to date
        here (the caller keeps it across steps and forgets ended sessions).
    snap : BlockSnapshot
        The step's snapshot (its cars are the planned ones; ``max_current_a`` holds the ceilings).
    trusted, settled : numpy.ndarray
        bool per car of ``snap``: trusted, and its reading taken with its offer in force long enough.
    measured_a, offered_a : numpy.ndarray
        [A per phase] Per car of ``snap``: what it draws and what its charger applies.
    under_draw_a : float
        [A] Below its offer by more than this, a car draws less than offered.

    Returns
    -------
    BlockSnapshot or None
    """
    ids = snap.cars.index.tolist()
    lo = snap.values("min_current_a")
    hi = snap.values("max_current_a")
    meas = np.asarray(measured_a, float)
    off = np.nan_to_num(np.asarray(offered_a, float))
    on = (off > 0) & (off >= lo - 1e-9)
    finite = np.isfinite(meas)
    early = trusted & ~settled & finite & (meas < off - under_draw_a)
    shown = trusted & on & finite & (meas > 0) & ~early
    for i in np.flatnonzero(shown):
        draws[ids[i]] = float(meas[i])
    rem = np.array([draws.get(x, np.nan) for x in ids], dtype=float)
    paused = trusted & ~on & np.isfinite(rem) & (rem < hi - 1e-6) & (hi >= lo) & (hi > 0)
    if not (early.any() or paused.any()):
        return None
    cars = snap.cars.copy(deep=False)
    view_meas = np.where(early, np.nan, meas)
    view_off = np.asarray(offered_a, float).copy()
    view_off[paused] = hi[paused]
    view_meas[paused] = rem[paused]
    cars["measured_current_a"] = view_meas
    cars["offered_current_a"] = view_off
    return BlockSnapshot(time=snap.time, site=snap.site, step=snap.step, cars=cars,
                         base_load_kw=snap.base_load_kw.copy(), prices_eur_per_kwh=snap.prices_eur_per_kwh,
                         current_step_a=float(snap.current_step_a), incidence_a=snap.incidence_a)
