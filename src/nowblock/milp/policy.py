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


def share_spare_a(snapshot: BlockSnapshot, current_a: np.ndarray, share: np.ndarray,
                  rule: str = "round_robin") -> np.ndarray:
    """Safe setpoints ``current_a`` [A] with the spare room of every limit row shared among the
    cars where ``share`` is True, up to their maximum.

    ``rule="round_robin"`` (default): round robin's turns of 1 A
    (:func:`nowblock.baselines.heuristics.round_robin_fill_a`) from where the cars are;
    ``rule="equal"``: max-min fair water-filling, as described next.

    A car at 0 first gets its minimum where every row it loads has room for it (in equal
    share's admission order, :func:`nowblock.baselines.heuristics.round_robin_order`), then the sharing cars rise together until a row binds or a car reaches
    its maximum; the result is floored to whole pilot steps, so every row keeps ``G @ x <= h``
    (:func:`nowblock.seam.constraint_rows`) and every setpoint is 0 or at least the minimum.
    """
    from nowblock.baselines.heuristics import hand_out_steps, round_robin_fill_a, round_robin_order
    from nowblock.seam import cached_constraint_rows

    if rule not in ("round_robin", "equal"):
        raise ValueError(f"rule: expected 'round_robin' or 'equal', got {rule!r}")
    x = np.array(current_a, dtype=float)
    share = np.asarray(share, dtype=bool)
    if not share.any():
        return x
    tol = 1e-6
    g, h = cached_constraint_rows(snapshot)
    step = float(snapshot.current_step_a)
    hi = np.nan_to_num(snapshot.values("max_current_a"))
    lo = np.nan_to_num(snapshot.values("min_current_a"))
    hi = np.floor(hi / step + 1e-9) * step if step > 0 else hi
    active = share & (x < hi - tol) & (hi >= lo - tol)
    # Turns (admission) as equal share's (least of its request delivered first, then the
    # longest waiting), not by departure: these cars' departures are guesses. Measured on the
    # congested residential week with unknown needs: 0.9633 against 0.9579 by estimated departure.
    order = round_robin_order(snapshot)
    if rule == "round_robin":
        return round_robin_fill_a(x, g, h, lo, hi, order, step, active)
    slack = h - g @ x
    for i in order[(active & (x <= tol))[order]]:
        need = g[:, i] * lo[i]
        if np.all(need <= slack + tol):  # admission at the minimum, where it fits
            x[i] = lo[i]
            slack -= need
        else:
            active[i] = False
    start = x.copy()
    # Progressive filling: each round raises the free cars by the same amount until a row binds
    # or a car reaches its maximum; every round freezes at least one car, so it ends.
    while active.any():
        rate = g[:, active].sum(axis=1)
        rising = rate > tol
        d_rows = np.min(np.maximum(slack[rising], 0.0) / rate[rising]) if rising.any() else np.inf
        d = min(d_rows, float(np.min(hi[active] - x[active])))
        x[active] += d
        slack -= rate * d
        binding = rising & (slack <= tol)
        frozen = (g[binding] > 0).any(axis=0) if binding.any() else np.zeros(len(x), dtype=bool)
        active &= ~(frozen | (x >= hi - tol))
    if step > 0:  # whole pilot steps, never below where a car started (its plan was safe)
        x = np.maximum(np.floor(x / step + 1e-9) * step, start)
        # The room flooring left: a step more for the sharing cars first in turn (as equal share).
        x = hand_out_steps(x, g, h, hi, order, step, share)
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
    ``arrivals_priority`` against a real car's priority). A forecast with a ``cp_index``
    column lists whole expected sessions instead, each planned at its own charging point
    (:func:`nowblock.milp.arrivals.with_expected_sessions`). ``reuse_plan`` (on by default): a
    call inside the first planning slot of the previous plan returns that plan's setpoints
    again, without solving, when nothing the plan depended on changed (see :meth:`_reusable`).
    ``milp_pause`` (0 by default: off): after a call whose MILP stage did not give the plan
    returned (neither its own plan nor the previous plan it starts from: polishing's was as
    good), the next that many solves skip the stage; consecutive plans of a receding horizon
    are alike, so a stage that did not pay mostly does not pay next step either. A speed knob
    for long studies, not free: on the congested workplace week (known needs, one process,
    docs/bench_quality.md, "Session 25") ``milp_pause=2`` took 12.4-14.6 s against 16.8-18.1 s
    and met 0.9460-0.9469 of the demand against 0.9469-0.9487 (three runs each, alternating).
    After each call, ``last_schedule`` holds the full plan and
    ``history`` one row per call (time, status, method, objective, gap, solve and build
    seconds, ``milp_stage``: "ran", "not run" or "paused"; status ``"reused"`` for a call
    answered from the previous plan).
    """

    name = "milp"

    def __init__(self, horizon="24h", step="15min", *, time_limit_fraction: float = 0.5,
                 first_slot_is_control_step: bool = False, arrivals_forecaster=None,
                 arrivals_priority: float = 0.5, reuse_plan: bool = True, milp_pause: int = 0,
                 **options) -> None:
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
        # A receding horizon needs the stage's plan, not its proof (OptimizeOptions.milp_prove).
        self.options = OptimizeOptions.from_kwargs(**{"milp_prove": False, **options})
        self._step_options: dict[tuple[float, float], OptimizeOptions] = {}
        self._step_options_of = self.options
        self.reuse_plan = bool(reuse_plan)
        if not milp_pause >= 0:
            raise ValueError(f"milp_pause: must be >= 0, got {milp_pause}")
        self.milp_pause = int(milp_pause)
        self._pause_left = 0  # solves left that skip the MILP stage
        self.last_schedule: Schedule | None = None
        self.history: list[dict] = []
        self._last_answer: tuple | None = None
        self._last_decision: Decision | None = None  # the plan ahead a reused answer comes with

    def reset(self) -> None:
        """Forget the previous plan and the call history (a new simulation run)."""
        self.last_schedule = None
        self.history = []
        self._last_answer = None
        self._last_decision = None
        self._pause_left = 0

    @staticmethod
    def warm_up() -> float:
        """Compile the planning step's numba kernels now; returns the seconds it took.

        The first step on a machine compiles them (26-28 s on this 2-core box with an empty numba
        cache, measured in session 27; 14 s before the unbalance moves of
        :mod:`nowblock.milp.balance_kernels`), later processes load them from numba's on-disk
        cache (0.7 s). A live controller calls this
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
        # The MILP stage's check of its starting points (a step runs it only when polishing left
        # a car short of its LP energy, so the steps above may not reach it).
        from nowblock.milp.matrix import is_feasible

        form = MilpPolicy().formulation(tight)
        mf = form.matrix()
        is_feasible(mf, np.zeros(mf.num_col))
        # The moves for cars an unbalance row blocks (only a plan that leaves one short reaches
        # them; from an empty plan every car is short).
        from nowblock.milp.rounding import serve_fuse_blocked, serve_unbalance_blocked

        serve_unbalance_blocked(form, np.zeros((form.n_cars, form.n_slots)))
        serve_fuse_blocked(form, np.zeros((form.n_cars, form.n_slots)))  # and those a fuse row blocks
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
        o = self.options
        if o.top_up_in_plan and o.top_up_h > 0 and form.n_cars:
            serve = snapshot.hours_to_departure_h <= o.top_up_h
            if "needs_known" in snapshot.cars.columns and not o.trust_estimates:
                serve = serve & snapshot.cars["needs_known"].to_numpy(bool)
            if serve.any():
                price = np.asarray(form.price_eur_per_kwh, dtype=float)
                spread = float(price.max() - price.min()) if len(price) else 0.0
                bonus = np.where(serve, spread + 0.05, 0.0)
                form = dataclasses.replace(form, now_bonus_eur_per_kwh=bonus)
        if self.arrivals_forecaster is not None and form.n_cars:
            from nowblock.milp.arrivals import with_expected_arrivals, with_expected_sessions

            forecast = self.arrivals_forecaster.predict(snapshot.time, self.horizon)
            if "cp_index" in forecast.columns:  # expected sessions, each at its charging point
                form = with_expected_sessions(form, forecast, priority=self.arrivals_priority)
            else:
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
        again = self._reusable(snapshot)
        if again is not None:
            self.history.append({"time": snapshot.time, "status": "reused", "objective": np.nan, "mip_gap": np.nan,
                                 "solve_seconds": 0.0, "build_seconds": 0.0, "n_cars": len(cars)})
            prev = self._last_decision
            now_a = pd.Series(again, index=cars.index, name="current_a")
            return Decision(now_a, None if prev is None else prev.plan_a, "reused",
                            "the previous plan still holds inside its first slot")
        form = self.formulation(snapshot)
        paused = self._pause_left > 0
        if paused:
            self._pause_left -= 1
            form = dataclasses.replace(form, options=dataclasses.replace(form.options, milp_effort=0.0))
        # The warm start is only read when the MILP stage runs: shifting the previous plan builds
        # its frames, so it is made on demand.
        sched = solve_formulation(form, warm_start_a=lambda: self._shifted_plan(form), started_at=t0)
        self.last_schedule = sched
        ran = any(st.get("stage") == "milp" for st in (sched.extra or {}).get("stages", ()))
        # The stage's candidates are its own plan and the previous plan shifted ("warm start").
        if ran and not sched.method.startswith(("milp", "warm start")):
            self._pause_left = self.milp_pause
        self.history.append({"time": snapshot.time, "status": sched.status, "method": sched.method,
                             "objective": sched.objective, "mip_gap": sched.mip_gap,
                             "solve_seconds": sched.solve_seconds, "build_seconds": sched.build_seconds,
                             "seconds": sched.seconds, "n_cars": len(cars),
                             "milp_stage": "paused" if paused else ("ran" if ran else "not run")})
        # The plan's first cars are the snapshot's, in order (``from_snapshot``; expected
        # arrivals come after them as virtual cars).
        n = len(cars)
        plan = sched.plan_a
        first = plan[:n, 0] if plan.shape[1] else np.zeros(n)
        # Every car that still needs energy may take the first slot's spare room, not only the
        # cars the plan leaves short: the plan's later slots are promises that arriving cars
        # break, and the optimizer's plans leave almost no car short on paper (with the
        # shortfall alone the top-up never fired on the congested residential week: 0.9882
        # demand met against 0.9942 this way, at 562 instead of 527 EUR; docs/bench_quality.md).
        want = np.asarray(snapshot.remaining_kwh, dtype=float)
        guessed = None
        if self.options.top_up_guessed and "needs_known" in cars.columns:
            guessed = ~cars["needs_known"].to_numpy(bool) & (snapshot.remaining_kwh > 1e-3)
            unplanned = guessed
            if self.options.plan_estimates == "all":
                unplanned = np.zeros(n, dtype=bool)
            elif self.options.plan_estimates == "fitted" and "needs_estimate" in cars.columns:
                unplanned = guessed & (cars["needs_estimate"].to_numpy(object) != "fitted")
            if unplanned.any():  # their room is shared equally below, with the spare
                first = np.where(unplanned, 0.0, first)
        safe = safe_setpoints_a(snapshot, first)
        if self.options.top_up_h > 0:
            short = np.where(snapshot.hours_to_departure_h <= self.options.top_up_h, want, 0.0)
            if guessed is not None and not self.options.trust_estimates:
                # Cars with guessed needs share the room below instead: topping them up by their
                # guessed departure is earliest-deadline-first on guesses (measured worse:
                # 0.9582 against 0.9633 demand met on the congested residential week).
                short = np.where(guessed, 0.0, short)
            if (short > 1e-3).any():  # the plan's peak only matters when someone is topped up
                power = (plan * form.kw_per_a[:, None]).sum(axis=0)
                peak = float((power + form.base_kw).max(initial=0.0))
                safe = top_up_first_slot_a(snapshot, safe, short, peak_kw=peak)
        if guessed is not None and guessed.any():
            # Estimated needs never cap these cars: a car that still wants energy shares what
            # room is left now (a full car's estimate is what it got, so its remaining need is
            # 0 and it is left alone). No peak budget: the plan's peak was paid for against
            # guessed needs, and energy a car that leaves takes with it is not deliverable later.
            safe = share_spare_a(snapshot, safe, guessed, rule=self.options.guessed_share)
        base_now = float(form.base_kw[0]) if len(form.base_kw) else 0.0
        slot_end = snapshot.time + pd.Timedelta(hours=float(form.slot_h[0])) if len(form.slot_h) else snapshot.time
        self._last_answer = (snapshot.time, slot_end, cars.index, self._signature(snapshot), base_now, safe.copy())
        now_a = pd.Series(safe, index=cars.index, name="current_a", copy=False)
        ahead = pd.DataFrame(plan[:n].T, index=pd.DatetimeIndex(form.times, name="time"), columns=cars.index)
        if len(ahead):
            ahead.iloc[0] = safe  # the slot sent now, as sent
        detail = f"{sched.method}; gap {sched.mip_gap:.2%}; {sched.seconds:.3f} s"
        self._last_decision = Decision(now_a, ahead, sched.status, detail)
        return self._last_decision

    _SIGNATURE = ("cp_index", "phases", "min_current_a", "max_current_a", "energy_requested_kwh", "priority")

    def _signature(self, snapshot: BlockSnapshot) -> np.ndarray:
        """What a plan depends on per car besides time: charge point, phases, current bounds
        [A], (estimated) need [kWh], priority, departure [ns] and whether needs were known."""
        cars = snapshot.cars
        cols = [snapshot.values(c) for c in self._SIGNATURE]
        cols.append(cars["departure"].array.as_unit("ns").asi8.astype(float))
        known = cars["needs_known"].to_numpy(bool) if "needs_known" in cars.columns else np.ones(len(cars), bool)
        cols.append(known.astype(float))
        return np.vstack(cols)

    def _reusable(self, snapshot: BlockSnapshot) -> np.ndarray | None:
        """The previous answer [A], when it still holds for ``snapshot``; else None.

        It holds while ``snapshot.time`` is inside the previous plan's first slot, the same
        cars are plugged in with the same bounds, needs and priorities, the block's other load
        now is at most what the plan's first slot allowed for, every car draws what it is
        offered (within 1 A: a car that draws less, tapering or full, changes what the plan
        expected it to get), every car's needs are known (not estimated), and the previous
        answer fits every limit row now. Then re-solving would plan the same first slot: the
        speed-up of re-planning only when something changed (issue 16).
        """
        last = self._last_answer
        if not self.reuse_plan or last is None or self.arrivals_forecaster is not None:
            return None
        if "needs_known" in snapshot.cars.columns and not snapshot.cars["needs_known"].to_numpy(bool).all():
            # Cars with estimated needs share the spare room in round robin's turns, whose order
            # moves with every kWh delivered: holding an answer for a planning slot holds the
            # turns still. Measured on the congested workplace week without history: 0.8672
            # demand met reusing, 0.8680 (round robin's own) re-deciding every step.
            return None
        t_plan, slot_end, ids, sig, base_kw, answer = last
        if not t_plan < snapshot.time < slot_end or not snapshot.cars.index.equals(ids):
            return None
        cur = self._signature(snapshot)
        if cur.shape != sig.shape or not np.array_equal(cur, sig, equal_nan=True):
            return None
        base = snapshot.base_load_kw.to_numpy(float)
        if len(base) and not base[0] <= base_kw + 1e-6:
            return None
        meas = snapshot.values("measured_current_a")
        offered = np.nan_to_num(snapshot.values("offered_current_a"))
        drawing = (offered <= 0.0) | (np.isfinite(meas) & (np.abs(meas - offered) <= 1.0))
        if not drawing.all():
            return None
        from nowblock.seam import cached_constraint_rows

        g, h = cached_constraint_rows(snapshot)
        if (g @ answer > h + 1e-6).any():
            return None
        return answer.copy()

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
