"""The receding-horizon MILP policy: plan the horizon, apply the first slot, repeat.

:class:`MilpPolicy` implements :class:`nowblock.interface.Policy`: every call builds the
formulation from the snapshot (:func:`~nowblock.optimize.formulation.from_snapshot`), warm
starts HiGHS from the previous plan shifted to the new time, solves with a time limit below
the control interval, and returns the first slot passed through
:func:`nowblock.interface.make_safe`. If the solver finds nothing, the schedule comes from the
baseline heuristic (``options.fallback``), so a block always gets a safe setpoint.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from nowblock.interface import BlockSnapshot, make_safe
from nowblock.optimize.formulation import Formulation, OptimizeOptions, from_snapshot
from nowblock.optimize.schedule import Schedule
from nowblock.optimize.solve import solve_formulation


class MilpPolicy:
    """Receding-horizon MILP over ``horizon`` in slots of ``step``; ``options`` are
    :class:`~nowblock.optimize.formulation.OptimizeOptions` fields.

    ``time_limit_fraction`` caps HiGHS's time limit at that fraction of the control interval
    (the snapshot's ``step``). ``first_slot_is_control_step`` makes the first planning slot as
    long as the control step (off by default: measured no better in simulation). After each call, ``last_schedule`` holds the full plan and
    ``history`` one row per call (time, status, objective, gap, solve and build seconds).
    """

    name = "milp"

    def __init__(self, horizon="24h", step="15min", *, time_limit_fraction: float = 0.5,
                 first_slot_is_control_step: bool = False, **options) -> None:
        self.horizon = pd.Timedelta(horizon)
        self.step = pd.Timedelta(step)
        if not 0 < time_limit_fraction <= 1:
            raise ValueError(f"time_limit_fraction: must be in (0, 1], got {time_limit_fraction}")
        self.time_limit_fraction = float(time_limit_fraction)
        self.first_slot_is_control_step = bool(first_slot_is_control_step)
        self.options = OptimizeOptions.from_kwargs(**options)
        self.last_schedule: Schedule | None = None
        self.history: list[dict] = []

    def reset(self) -> None:
        """Forget the previous plan and the call history (a new simulation run)."""
        self.last_schedule = None
        self.history = []

    def formulation(self, snapshot: BlockSnapshot) -> Formulation:
        """The planning problem this policy solves for ``snapshot``."""
        limit = min(self.options.time_limit_s, self.time_limit_fraction * snapshot.step.total_seconds())
        opts = dataclasses.replace(self.options, current_step_a=float(snapshot.current_step_a),
                                   time_limit_s=max(limit, 0.05))
        return from_snapshot(snapshot, self.horizon, self.step, opts,
                             first_slot_is_control_step=self.first_slot_is_control_step)

    def schedule(self, snapshot: BlockSnapshot) -> pd.Series:
        """Setpoints [A] for the cars in ``snapshot`` (the first slot of a fresh plan, made safe)."""
        cars = snapshot.cars
        if len(cars) == 0:
            return pd.Series(np.zeros(0), index=cars.index, name="current_a", dtype=float)
        form = self.formulation(snapshot)
        sched = solve_formulation(form, warm_start_a=self._shifted_plan(form))
        self.last_schedule = sched
        self.history.append({"time": snapshot.time, "status": sched.status, "objective": sched.objective,
                             "mip_gap": sched.mip_gap, "solve_seconds": sched.solve_seconds,
                             "build_seconds": sched.build_seconds, "n_cars": len(cars)})
        first = sched.first_slot().reindex(cars.index).fillna(0.0)
        return make_safe(snapshot, first)

    def _shifted_plan(self, form: Formulation) -> np.ndarray | None:
        """The previous plan on the new slots: each new slot takes the old slot it starts in."""
        prev = self.last_schedule
        if prev is None or len(prev.current_a) == 0:
            return None
        old = prev.current_a
        pos = old.index.searchsorted(form.times, side="right") - 1
        end = old.index[-1] + self.step
        valid = (pos >= 0) & (form.times < end)
        vals = old.reindex(columns=pd.Index(form.session_ids)).fillna(0.0).to_numpy(float)  # (T_old, n)
        plan = np.zeros((form.n_cars, form.n_slots))
        plan[:, valid] = vals[pos[valid]].T
        return plan
