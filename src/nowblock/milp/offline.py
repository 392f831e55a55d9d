"""The perfect-foresight yardstick: one solve over a whole scenario, every session known.

No online policy can beat it on the same objective: it knows every arrival, departure and
energy in advance and how much of the offered current each car draws (``draw_fraction``).
It ignores the battery taper, so its energy is an upper bound for what a simulation can
deliver.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nowblock.milp.adapters import from_sessions
from nowblock.milp.options import OptimizeOptions
from nowblock.milp.schedule import Schedule
from nowblock.milp.solve import solve_formulation


def solve_offline(scenario, step="5min", *, start=None, end=None, **options) -> Schedule:
    """Plan every session of ``scenario`` in one horizon from ``start`` to ``end``.

    ``step`` defaults to the simulator's default control step (5 min), so the yardstick sees the
    same slot grid (and the same within-step base-load maxima) as a simulation it is compared
    with; on a coarser grid it is more conservative than the simulation it should bound.
    Defaults: the first arrival floored and the last departure ceiled to ``step``; binaries on
    every slot (``binary_slots=None``) and a 120 s time limit, both overridable through
    ``options`` (:class:`~nowblock.milp.formulation.OptimizeOptions` fields). The
    schedule's ``current_a`` is what each car draws [A]; ``energy_kwh`` per session [kWh].
    """
    step = pd.Timedelta(step)
    sess = scenario.sessions
    t0 = pd.Timestamp(start) if start is not None else sess["arrival"].min().floor(step)
    t1 = pd.Timestamp(end) if end is not None else sess["departure"].max().ceil(step)
    # The decision is the drawn current (offered x draw_fraction), not a pilot setpoint: rounding
    # it to whole amps would throw away up to 1 A per car and slot.
    # An upper bound on the energy delivered by ``end`` values every kWh alike: energy a car
    # leaving after ``end`` could still get later is not priced lower (after_horizon_weight).
    opts = {"binary_slots": None, "time_limit_s": 120.0, "current_step_a": 0.01, "after_horizon_weight": 1.0,
            **options}
    form = from_sessions(scenario.site, sess, start=t0, horizon=t1 - t0, step=step, base_load=scenario.base_load,
                         prices=scenario.prices, options=OptimizeOptions.from_kwargs(**opts), use_draw_fraction=True)
    return solve_formulation(form)


def offline_energy_kwh(schedule: Schedule, need_kwh: pd.Series | None = None) -> float:
    """Total energy [kWh] the offline plan delivers; with ``need_kwh`` (by session_id) counted
    up to each session's need (a plan may offer a car up to one slot beyond it: the car stops
    when full, so a simulation can never deliver that part)."""
    e = schedule.energy_kwh
    if need_kwh is not None:
        e = np.minimum(e, pd.Series(need_kwh).reindex(e.index).to_numpy(float))
    return float(np.nansum(np.asarray(e, dtype=float)))
