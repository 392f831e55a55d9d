"""The receding-horizon MILP policy: plan the horizon, apply the first slot, repeat.

:class:`MilpPolicy` implements :class:`nowblock.seam.Policy`: every call builds the
formulation from the snapshot (:func:`~nowblock.milp.formulation.from_snapshot`), warm
starts HiGHS from the previous plan shifted to the new time, solves with a time limit below
the control interval, and returns the first slot passed through
:func:`nowblock.seam.make_safe`. If the solver finds nothing, the schedule comes from the
baseline heuristic (``options.fallback``), so a block always gets a safe setpoint.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from nowblock.milp.adapters import from_snapshot
from nowblock.milp.formulation import Formulation
from nowblock.milp.options import OptimizeOptions
from nowblock.milp.schedule import Schedule
from nowblock.milp.solve import solve_formulation
from nowblock.seam import BlockSnapshot, Decision, safe_setpoints_a


def top_up_first_slot(snapshot: BlockSnapshot, current_a: pd.Series, shortfall_kwh: np.ndarray,
                      peak_kw: float = np.inf) -> pd.Series:
    """Safe setpoints ``current_a`` [A] with the spare room of every limit row given to the cars
    whose plan leaves ``shortfall_kwh`` [kWh] > 0, earliest departure first, up to their maximum.

    Work-conserving for cars at risk only: a car the plan serves in full keeps its (cheaper)
    plan. Every raise keeps ``G @ x <= h`` (:func:`nowblock.seam.constraint_rows`), in
    whole pilot steps, and 0 or at least the minimum; the block's power now (base load plus
    charging) stays at most ``peak_kw`` [kW] (the plan's own peak: the top-up must not undo
    the peak the plan paid for).
    """
    if not (np.asarray(shortfall_kwh) > 1e-3).any():
        return current_a
    x = top_up_first_slot_a(snapshot, current_a.to_numpy(float), shortfall_kwh, peak_kw)
    return pd.Series(x, index=current_a.index, name=current_a.name)


def top_up_first_slot_a(snapshot: BlockSnapshot, current_a: np.ndarray, shortfall_kwh: np.ndarray,
                        peak_kw: float = np.inf) -> np.ndarray:
    """:func:`top_up_first_slot` on arrays in the order of ``snapshot.cars`` (setpoints [A] in,
    a new array of setpoints [A] out)."""
    x = np.array(current_a, dtype=float)
    short = np.nonzero(np.asarray(shortfall_kwh) > 1e-3)[0]
    if not len(short):
        return x
    from nowblock.seam import cached_constraint_rows
    from nowblock.milp.kernels import top_up_now

    g, h = cached_constraint_rows(snapshot)
    kw = snapshot.kw_per_a()
    base = snapshot.base_load_kw.to_numpy()
    budget_kw = peak_kw - (float(base[0]) if len(base) else 0.0) - float(kw @ x)
    order = short[np.argsort(snapshot.hours_to_departure_h[short], kind="stable")]
    top_up_now(x, order, g, h - g @ x, snapshot.values("max_current_a"), snapshot.values("min_current_a"), kw,
               float(budget_kw), float(snapshot.current_step_a))
    return x


_WARM = False  # MilpPolicy.warm_up ran in this process


class MilpPolicy:
    """Receding-horizon MILP over ``horizon`` in slots of ``step``; ``options`` are
    :class:`~nowblock.milp.formulation.OptimizeOptions` fields.

    ``time_limit_fraction`` caps HiGHS's time limit at that fraction of the control interval
    (the snapshot's ``step``). ``first_slot_is_control_step`` makes the first planning slot as
    long as the control step (off by default: measured no better in simulation).
    ``arrivals_forecaster`` (optional, off by default): anything with ``predict(start, horizon)``
    like a fitted :class:`nowblock.forecast.ArrivalForecaster`; its expected arrivals are
    planned as soft demand that holds capacity back for them
    (:func:`nowblock.milp.arrivals.with_expected_arrivals`, shortfall weight
    ``arrivals_priority`` against a real car's priority). After each call, ``last_schedule`` holds the full plan and
    ``history`` one row per call (time, status, objective, gap, solve and build seconds).
    """

    name = "milp"

    def __init__(self, horizon="24h", step="15min", *, time_limit_fraction: float = 0.5,
                 first_slot_is_control_step: bool = False, arrivals_forecaster=None,
                 arrivals_priority: float = 0.5, **options) -> None:
        self.horizon = pd.Timedelta(horizon)
        self.step = pd.Timedelta(step)
        if not 0 < time_limit_fraction <= 1:
            raise ValueError(f"time_limit_fraction: must be in (0, 1], got {time_limit_fraction}")
        self.time_limit_fraction = float(time_limit_fraction)
        self.first_slot_is_control_step = bool(first_slot_is_control_step)
        self.arrivals_forecaster = arrivals_forecaster
        if not arrivals_priority >= 0:
            raise ValueError(f"arrivals_priority: must be >= 0, got {arrivals_priority}")
        self.arrivals_priority = float(arrivals_priority)
        self.options = OptimizeOptions.from_kwargs(**options)
        self._step_options: dict[tuple[float, float], OptimizeOptions] = {}
        self._step_options_of = self.options
        self.last_schedule: Schedule | None = None
        self.history: list[dict] = []

    def reset(self) -> None:
        """Forget the previous plan and the call history (a new simulation run)."""
        self.last_schedule = None
        self.history = []

    @staticmethod
    def warm_up() -> float:
        """Compile the planning step's numba kernels now; returns the seconds it took.

        The first step on a machine compiles them (~10 s on this 2-core box, measured), later
        processes load them from numba's on-disk cache (~0.5 s). A live controller calls this
        before it serves, so no charger waits on a compiler. Plans a small made-up block twice
        at 1 A steps (the LP stage), then a tight one with an unbalance limit twice at 0.1 A with
        no gap allowed (the MILP stage from a previous plan, the unbalance rounding); no policy's
        state is touched. Later calls in the same process return 0 at once.
        """
        import time

        from nowblock.milp.testing import plugged_in_snapshot

        global _WARM
        if _WARM:  # compiled code stays loaded for the process's life
            return 0.0
        t0 = time.perf_counter()
        easy = plugged_in_snapshot(6, seed=1)
        tight = plugged_in_snapshot(9, seed=2, grid_share=0.1, single_phase_share=0.6, max_unbalance_a=6.0)
        for snap, step_a, gap in ((easy, 1.0, 0.01), (tight, 0.1, 0.0)):
            pol = MilpPolicy(time_limit_s=5.0, mip_rel_gap=gap, mip_abs_gap=gap)
            for k in range(2):
                pol.schedule(dataclasses.replace(snap, time=snap.time + k * snap.step, current_step_a=step_a))
        # The plan from scratch under a power cap (what a step gets when HiGHS finds nothing).
        from nowblock.milp.rounding import make_plan

        make_plan(MilpPolicy().formulation(easy), None, peak_kw=1.0)
        _WARM = True
        return time.perf_counter() - t0

    def formulation(self, snapshot: BlockSnapshot) -> Formulation:
        """The planning problem this policy solves for ``snapshot``."""
        limit = max(min(self.options.time_limit_s, self.time_limit_fraction * snapshot.step.total_seconds()), 0.05)
        key = (float(snapshot.current_step_a), limit)
        if self._step_options_of is not self.options:  # options replaced since: start over
            self._step_options, self._step_options_of = {}, self.options
        opts = self._step_options.get(key)
        if opts is None:  # the same few per run: validated once, not every step
            opts = self._step_options[key] = dataclasses.replace(self.options, current_step_a=key[0], time_limit_s=limit)
        form = from_snapshot(snapshot, self.horizon, self.step, opts,
                             first_slot_is_control_step=self.first_slot_is_control_step)
        if self.arrivals_forecaster is not None and form.n_cars:
            from nowblock.milp.arrivals import with_expected_arrivals

            forecast = self.arrivals_forecaster.predict(snapshot.time, self.horizon)
            form = with_expected_arrivals(form, forecast, priority=self.arrivals_priority)
        return form

    def schedule(self, snapshot: BlockSnapshot) -> pd.Series:
        """Setpoints [A] for the cars in ``snapshot`` (the first slot of a fresh plan, made safe);
        :meth:`decide` gives the plan ahead with them."""
        return self.decide(snapshot).current_a

    def decide(self, snapshot: BlockSnapshot) -> Decision:
        """Plan the horizon from ``snapshot``: the safe setpoints [A] of its first slot and the plan
        ahead.

        Parameters
        ----------
        snapshot : BlockSnapshot

        Returns
        -------
        Decision
            ``current_a``: the first slot's setpoints [A per phase] after the safety net and the
            top-up, by session_id; ``plan_a``: the MILP's plan [A per phase] over the horizon,
            slot start (UTC) x the snapshot's session_ids (expected arrivals left out), its first
            row replaced by ``current_a``; ``status``: the schedule's status ("optimal",
            "time_limit", "suboptimal", "fallback"); ``detail``: how it was found and its gap.
            The whole :class:`~nowblock.milp.schedule.Schedule` is kept as ``last_schedule``, one
            row a call in ``history``.
        """
        t0 = time.perf_counter()
        cars = snapshot.cars
        if len(cars) == 0:
            empty = pd.Series(np.zeros(0), index=cars.index, name="current_a", dtype=float)
            return Decision(empty, None, "empty", "no car plugged in")
        form = self.formulation(snapshot)
        # The warm start is only read when the MILP stage runs: shifting the previous plan builds
        # its frames, so it is made on demand.
        sched = solve_formulation(form, warm_start_a=lambda: self._shifted_plan(form), started_at=t0)
        self.last_schedule = sched
        self.history.append({"time": snapshot.time, "status": sched.status, "method": sched.method,
                             "objective": sched.objective, "mip_gap": sched.mip_gap,
                             "solve_seconds": sched.solve_seconds, "build_seconds": sched.build_seconds,
                             "seconds": sched.seconds, "n_cars": len(cars)})
        # The plan's first cars are the snapshot's, in order (``from_snapshot``; expected
        # arrivals come after them as virtual cars).
        n = len(cars)
        plan = sched.plan_a
        first = plan[:n, 0] if plan.shape[1] else np.zeros(n)
        short = sched.shortfall_per_car_kwh[:n]
        safe = safe_setpoints_a(snapshot, first)
        if self.options.top_up_h > 0:
            short = np.where(snapshot.hours_to_departure_h <= self.options.top_up_h, short, 0.0)
            if (short > 1e-3).any():  # the plan's peak only matters when someone is topped up
                power = (plan * form.kw_per_a[:, None]).sum(axis=0)
                peak = float((power + form.base_kw).max(initial=0.0))
                safe = top_up_first_slot_a(snapshot, safe, short, peak_kw=peak)
        now_a = pd.Series(safe, index=cars.index, name="current_a", copy=False)
        ahead = pd.DataFrame(plan[:n].T, index=pd.DatetimeIndex(form.times, name="time"), columns=cars.index)
        if len(ahead):
            ahead.iloc[0] = safe  # the slot sent now, as sent
        detail = f"{sched.method}; gap {sched.mip_gap:.2%}; {sched.seconds:.3f} s"
        return Decision(now_a, ahead, sched.status, detail)

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
