"""One planning step: formulation -> LPs -> real plans (-> MILP -> real plan) -> :class:`Schedule`.

The time limit (``options.time_limit_s``) bounds the whole call, from the moment ``optimize``
(or the caller of :func:`solve_formulation`, through ``started_at``) starts; every solver stage
gets what is left less a reserve for the plans after it (:func:`reserve_seconds`, or 1.5 times
the longest plan made so far in the call, whichever is longer).

0. **Coarse stage** for fine slot grids (:data:`COARSE_MIN_CELLS`; below it, in calls planned once,
   its plan is one more candidate): the LP on 15-minute slots (a restriction) with the peak
   priced on the mean over the critical interval, made real fine plans, and a Lagrange bound on
   the fine model from its duals (:mod:`nowblock.milp.coarse`); on large blocks the fine LPs
   then only if that does not certify the plan, within ``milp_effort`` times the time spent,
   skipped when predicted beyond it, and not with unbalance rows (slow, plans no better).

1. **The LP without the peak term** (when the model has one): fast (the peak rows tie every
   slot together and make HiGHS's LP up to a few hundred times slower); its time sets the
   budget of the next stage, its optimum plus the base load's peak at ``peak_eur_per_kw`` is a
   proven bound.
2. **The LP** of the whole model (the fuse rooms floored to the pilot step, so its optimum
   bounds every plan a charger can follow), from the first stage's basis when that pays
   (:func:`~nowblock.milp.peak.warm_start_pays`), within ``10 x`` its time or 0.5 s; cold if
   the model is small (:data:`_COLD_LP_MAX_NZ` nonzeros in the first stage's LP: by size, not by
   measured time, so that a busy machine gets the same plan, only later); otherwise **the LP
   with the peak priced on the mean** over the critical interval
   (:func:`~nowblock.milp.peak.mean_peak_matrix`, Lagrange's bound). The solution becomes real
   plans (:func:`real_plan`, :func:`nowblock.milp.rounding.make_plan`); each plan's objective
   is computed from the plan; the LP's optimum is the bound.
3. If the whole LP did not run or finish: real plans from the first stage's solution, and one
   from scratch under the critical peak, least laxity first; and, time permitting, Lagrange's
   bound over the critical interval.
4. **Polish** the best plan, if not certified (:func:`~nowblock.milp.plans.polish`); then the
   **MILP stage** (:mod:`nowblock.milp.stage`), if the best plan is not certified (more than ``mip_rel_gap`` and
   ``mip_abs_gap`` from the bound), gives some car less than the LP did and the stage has at
   most :data:`_MILP_MAX_BINARIES` binaries: HiGHS with the
   currents of the first ``binary_slots`` slots in whole pilot steps and on/off binaries on
   those cells where a limit can bind, started from the best plan so far, within
   ``milp_effort`` times the time spent so far or ``milp_min_s`` (never past the limit): first
   on the plan's neighbourhood (integers fixed where the stage's LP relaxation agrees with it,
   RINS), then on the whole MILP (``milp_prove``, or when the neighbourhood held nothing
   better). Its solution is made real the same way; its bound holds for every plan in pilot
   steps.
5. If the bound is still the coarse stage's (no fine LP finished) and the plan not certified:
   **the bound's ascent** on the coarse prices (:func:`~nowblock.milp.coarse.improve_bound`)
   for a quarter of the time spent (at least 0.1 s, never past the limit). It changes no plan.
6. The best real plan by objective is returned (a MILP incumbent that rounds worse never
   replaces a better plan; on a tie the whole LP's plan), with the best proven bound, its gap,
   ``status`` and ``method``.

Without any LP solution (``status="fallback"``, ``method="greedy"``) the plan is the cheaper of
the greedy plan without a power cap (cars earliest deadline first; made first and timed) and, when
the time left holds :data:`_CAPPED_PLAN_FACTOR` times that, the one under the critical peak of
the cars' needs (least laxity first); ``detail`` says which; if HiGHS raises, the
baseline heuristic ``options.fallback`` played forward (:func:`fallback_schedule`).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from nowblock.milp.adapters import from_sessions
from nowblock.milp.coarse import Lagrangian, coarse_factor, coarse_formulation, expand, fine_row_prices, improve_bound
from nowblock.milp.formulation import Formulation, OptimizeOptions
from nowblock.milp.highs_fast import SolveResult, SolverOptionError, extend_basis, race_lp, solve_matrix
from nowblock.milp.inputs import check_duration, check_series, check_start, cover_horizon
from nowblock.milp.matrix import plan_objective
from nowblock.milp.peak import critical_peak_kw, mean_peak_matrix, plan_peak_kw, warm_start_pays
from nowblock.milp.plans import Best as _Best, certified as _certified, polish, real_plan, relative_gap as _gap
from nowblock.milp.rounding import Plan, make_plan
from nowblock.milp.schedule import Schedule, fallback_schedule, plan_schedule
from nowblock.milp.stage import milp_stage


def reserve_seconds(form: Formulation) -> float:
    """Time [s] kept back from a solver stage for making, pricing and checking plans after it,
    before any plan of the call has been timed: 20 ms plus 4 us per (car, slot) pair, 16 us with
    an unbalance limit (the real-draw repair). Measured under load (load average 3-4; two plans
    are made after a stage that times out): with the unbalance limit 0.23-0.26 s for both at 200
    cars x 96 slots and 1.6 s at 1,000 x 96 (12-17 us per pair), where 4 us let calls return 1.3
    times their limit (docs/bench_optimize.md). Once a plan is timed, :meth:`_Run.left` scales
    the reserve with it."""
    per_pair = 16e-6 if form.site.max_unbalance_a is not None else 4e-6
    return 0.02 + per_pair * form.n_cars * form.n_slots


#: Fine grids with at least this many (car, slot) cells get the coarse stage first: the fine LP took
#: 25-200 s at 1,000 cars x 288 slots, the coarse LP 3-5 s; at 200 x 288 it certified the blocks
#: without load or prices in 0.2-0.3 s (fine LPs 0.4-1.2 s; docs/bench_optimize.md, session 29).
#: Below (50 cars), alone its plans were worse; beside the fine LPs' (``milp_prove``: planned once)
#: they won on 4 of 24 5-minute cells: 50-15%-tree-5min-load gap 12.40 -> 2.34 %, none worse,
#: call time median 1.35 x (docs/benchmarks.md, session 39). The receding horizon keeps its path.
COARSE_MIN_CELLS = 20_000
_RESERVE_PLAN_FACTOR = 2.0  # the reserve after a solver stage, in longest plans made (see _Run.left)
_PEAK_LP_FACTOR = 10.0  # the LP with the peak term may take this many times the LP without it ...
_PEAK_LP_MIN_S = 0.5  # ... or this long [s], whichever is longer (then the time left)
#: Otherwise the whole LP still runs (cold) when it is cheap, told by the size of the LP without
#: the peak term (nonzeros), not by that LP's measured time: a busy machine took the mean-peak
#: path on the same model and planned 3-6 times further from the bound (50-70%-tree-15min-unb
#: gap 0.032 -> 0.195; 50-35%-tree-15min-unb 998.13 -> 995.31 kWh, session 37). The whole LP's
#: plan beat the mean-peak LP's on small blocks (200 cars, 35 %, flat, 15 min: 0.54 % against
#: 1.09 % from the bound). Calibrated on the old rule (that LP <= 50 ms on a quiet machine,
#: docs/optimizer.md): up to 68,000 nonzeros (50 and 200 cars at 15 min, 50 at 5 min) it took
#: 0.003-0.2 s and the cold whole LP 0.04-1.2 s at load 13 (about 5 x the quiet machine's);
#: 147,000-342,000 (200 x 288 slots, 1,000 x 96) 0.17-2.7 s and 0.3-14 s. Its own budget cuts it.
_COLD_LP_MAX_NZ = 100_000
_SCHEDULE_SECONDS = 0.03  # the greedy plan's objective and the schedule's frames at 1,000 cars x 288 slots [s]
_CAPPED_PLAN_FACTOR, _CAPPED_TAIL_PLANS = 2.5, 2.0  # the greedy plan under the peak cap, in uncapped plans
_POLISH_ROUNDS = 4  # roundings of the best plan at most (nowblock.milp.plans.polish)
#: The MILP stage runs only with at most this many on/off binaries: after polishing, HiGHS
#: returned the polished plan itself on every cell of the instance matrix with 1,600 or more
#: (200 and 1,000 cars, 8 binary slots; 1-3 s spent); with 400 (50 cars) it improved a plan by
#: 0.26 % once in four cells tried (docs/bench_optimize.md).
_MILP_MAX_BINARIES = 1000
#: [s] The least time the whole MILP of a small block gets in ``optimize`` (never past the time
#: limit; see :func:`solve_formulation`): the 84 small blocks of an outside test were solved to
#: their gap in 0.07-0.4 s each, 0.1 s left some 16-20 % off.
_SMALL_MILP_MIN_S = 1.0
#: The bound's ascent after a coarse stage (:func:`nowblock.milp.coarse.improve_bound`) may take
#: this share of the time the call has spent, at least ``_ASCENT_MIN_S`` [s], and ends this long
#: [s] before the time limit.
_ASCENT_SHARE, _ASCENT_MIN_S, _ASCENT_RESERVE_S = 0.25, 0.1, 0.05
#: The ascent also runs right after the coarse stage when the fine LPs are predicted to take at
#: least this long [s] (:func:`solve_formulation`).
_EARLY_ASCENT_MIN_S = 1.0


def _energy_up_to_need(form: Formulation, x: np.ndarray) -> np.ndarray:
    """The energy [kWh] a dense plan ``x`` [A] gives each car, counted up to its need."""
    return np.minimum((x * form.energy_per_a_kwh).sum(axis=1), np.maximum(np.nan_to_num(form.need_kwh), 0.0))


def _milp_binaries(form: Formulation, mf, n_window: int | None = None) -> int:
    """How many on/off binaries the MILP stage would have (cells of stated rows in its window of
    ``n_window`` slots, default ``form.n_binary_slots``)."""
    n_window = form.n_binary_slots if n_window is None else n_window
    return int(np.count_nonzero(form.cells[1][mf.fuse_cells] < n_window))


class _Run:
    """The LP stages of one call and what they found: the best real plan, the best proven bound,
    the stages' records and times (see :func:`solve_formulation`)."""

    def __init__(self, form: Formulation, t0: float, deadline: float, reserve: float) -> None:
        self.form, self.t0, self.deadline, self.reserve = form, t0, deadline, reserve
        self.best = _Best()
        self.bound = float("nan")
        self.stages: list[dict] = []
        self.solve_s = self.build_s = self.run_s = 0.0
        self.mf = form.matrix(relax=True) if form.options.backend == "highs" else None
        self.lp0 = None  # (the model without its peak term, its matrix, its solution, the critical slots)
        self.lp0_seconds = 0.0
        self.lp0_basis = None  # its optimal basis (highspy), to start the LPs that follow from
        self.lp_solved = False
        self.mean_peak_done = False  # the LP with the peak priced on the mean has run
        self.plan_s = 0.0  # the longest a real_plan call of this call took [s]
        self.coarse_seconds = 0.0  # the coarse LP's solve time [s]
        self.lagrangian = None  # (coarse.Lagrangian, its prices from the coarse LP's duals)

    def left(self) -> float:
        """Time [s] a solver stage may still take: what is left less the reserve for the plans
        after it, :func:`reserve_seconds` or, once a plan was made, ``_RESERVE_PLAN_FACTOR``
        times the longest one took (plus 20 ms), whichever is longer: under load the fixed
        estimate fell short and calls returned up to 1.12 times their limit
        (docs/bench_optimize.md). After a stage that times out up to two plans are made."""
        return self.deadline - time.perf_counter() - self.reserve_now()

    def reserve_now(self) -> float:
        """Time [s] kept back for the plans after a solver stage (see :meth:`left`)."""
        return max(self.reserve, _RESERVE_PLAN_FACTOR * self.plan_s + 0.02)

    def real_plan(self, mf, x: np.ndarray, caps=None) -> tuple[Plan, float]:
        """:func:`real_plan`, timed (its time sets the reserve, :meth:`left`)."""
        t = time.perf_counter()
        out = real_plan(self.form, mf, x, caps, until=self.deadline - _SCHEDULE_SECONDS)
        self.plan_s = max(self.plan_s, time.perf_counter() - t)
        return out

    def least_laxity_plan(self, peak_kw: float, energy: np.ndarray) -> None:
        """Offer the least-laxity plan of ``energy`` [kWh per car] under ``peak_kw`` [kW], from
        nothing, if the time left holds the longest plan made so far: a plan is already in hand
        when it is asked for, and without that check (and the deadline passed to it) a 200-car
        call at 5-minute slots returned at 1.6-1.7 x its 0.42 s limit (this plan, 0.13-0.17 s,
        made after the coarse stage's own). Its cap is raised only until the deadline."""
        if self.deadline - time.perf_counter() <= self.plan_s + _SCHEDULE_SECONDS:
            self.stages.append({"stage": "least laxity plan", "status": "skipped (no time left)",
                                "seconds": time.perf_counter() - self.t0})
            return
        t = time.perf_counter()
        flat = make_plan(self.form, None, peak_kw=peak_kw, target_kwh=energy,
                         shave_until=self.deadline - _SCHEDULE_SECONDS)
        self.plan_s = max(self.plan_s, time.perf_counter() - t)
        self.best.offer(flat, plan_objective(self.form, self.mf, flat.current_a),
                        "least laxity under the critical peak")

    def _no_time(self, stage: str) -> bool:
        """True (and the stage recorded as skipped) when a solver stage would get no time: its
        matrices alone cost more than a HiGHS call of a millisecond is worth (measured: 0.8 s
        of building at 1,000 cars x 288 slots under a 2.9 s limit, then the greedy plan)."""
        if self.left() > 0.01:
            return False
        self.stages.append({"stage": stage, "status": "skipped (no time left)",
                            "seconds": time.perf_counter() - self.t0})
        return True

    def certified(self) -> bool:
        return self.best.plan is not None and _certified(self.best.objective, self.bound, self.form.options)

    def _account(self, res: SolveResult) -> None:
        self.solve_s += res.solve_seconds
        self.build_s += res.build_seconds
        self.run_s += res.run_call_seconds

    def _record(self, name: str, res: SolveResult, objective: float = float("nan")) -> None:
        self.stages.append({"stage": name, "status": res.status, "relaxed_objective": res.objective,
                            "objective": objective, "seconds": time.perf_counter() - self.t0})

    def _raise_bound(self, value: float) -> None:
        if np.isfinite(value):
            self.bound = value if not np.isfinite(self.bound) else max(self.bound, value)

    def lp_stage(self, budget: float, basis=None) -> None:
        """The LP relaxation of the whole model (from ``basis``, if given), made into real plans;
        its optimum is the bound."""
        form, mf = self.form, self.mf
        if budget <= 0.01 and self._no_time("lp"):
            return
        res = solve_matrix(form, mf, budget, basis=basis)
        self._account(res)
        objective = float("nan")
        if res.values is not None and res.status in ("optimal", "time_limit"):
            x = form.current_from_cells(mf.current_a(res.values))
            plan, objective = self.real_plan(mf, x)
            # On a tie the whole LP's plan: the objective's terms are the same, but the LP without
            # the peak term chose among equal slots blindly (simulated: 10 % more peak).
            self.best.offer(plan, objective, "lp+rounding", wins_ties=True)
            if res.status == "optimal":
                self.lp_solved = True
                self._raise_bound(res.bound)
        self._record("lp", res, objective)

    def coarse_stage(self, m: int) -> None:
        """The LP on slots of ``m`` fine slots (a restriction,
        :func:`~nowblock.milp.coarse.coarse_formulation`) with the peak priced on the mean over
        the critical interval of what the cars could take (:func:`~nowblock.milp.peak.
        mean_peak_matrix`), made real fine plans: its own, rounded, and the least-laxity plan of
        its energies under their critical peak. The LP is raced: HiGHS's simplex and its
        interior-point method side by side, the first optimal answer kept
        (:func:`~nowblock.milp.highs_fast.race_lp`). Its row duals give a Lagrange bound on the fine
        model (:class:`~nowblock.milp.coarse.Lagrangian`, the peak priced on the same interval
        or on the whole horizon, whichever bounds higher), kept for the bound's ascent at the
        end of the call (:meth:`bound_ascent`)."""
        form = self.form
        if self._no_time("coarse lp"):
            return
        c1 = coarse_formulation(form, m)
        c0 = c1.with_options(peak_eur_per_kw=0.0)
        mfc = c0.matrix(relax=True)
        peak_slots = None
        if form.options.peak_eur_per_kw > 0:
            # Without the peak term the coarse plan ignored it: 12-31 % from the bound on blocks
            # without load or prices, where the peak is the whole cost (docs/bench_optimize.md).
            # Still one LP, only its costs differ (its time moved either way on the matrix).
            can_kwh = (c1.upper_a * c1.energy_per_a_kwh).sum(axis=1)
            first = critical_peak_kw(c1, np.minimum(np.maximum(np.nan_to_num(c1.need_kwh), 0.0), can_kwh))[1]
            mfc, _ = mean_peak_matrix(c1, mfc, first)
            peak_slots = min(first * m, form.n_slots)
        t = time.perf_counter()
        res = race_lp(c0, mfc, self.left())
        self.coarse_seconds = time.perf_counter() - t
        self._account(res)
        objective = float("nan")
        if res.values is not None and res.status in ("optimal", "time_limit"):
            x = expand(form, c0.current_from_cells(mfc.current_a(res.values)), m)
            plan, objective = self.real_plan(self.mf, x)
            self.best.offer(plan, objective, "coarse lp+rounding")
            energy = _energy_up_to_need(form, plan.current_a)
            critical = critical_peak_kw(form, energy)[0]
            # The least-laxity plan of the same energies can only gain by its lower peak; made
            # (0.25 s at 200 cars x 288 slots under unbalance rows) only when that could matter
            # against the gap the call aims for (it won on every block without load or prices).
            if form.options.peak_eur_per_kw * (plan_peak_kw(form, plan.current_a) - critical) \
                    > form.options.mip_rel_gap * abs(objective):
                self.least_laxity_plan(critical, energy)
            if res.status == "optimal" and res.row_dual is not None and form.options.sharing != "fair":
                rows, lam = fine_row_prices(form, self.mf, c0, mfc, res.row_dual, m)
                best = None
                for k in {peak_slots, None}:
                    lagr = Lagrangian(form, self.mf, rows, peak_slots=k)
                    value = lagr.value(lam)[0]
                    if best is None or value > best[0]:
                        best = (value, lagr)
                self.lagrangian = (best[1], lam)
                self._raise_bound(best[0])
        self._record("coarse lp", res, objective)

    def bound_ascent(self, reserve: float, budget_s: float | None = None) -> None:
        """Raise the coarse stage's Lagrange bound by subgradient ascent on its prices
        (:func:`~nowblock.milp.coarse.improve_bound`, towards the best plan's objective) for
        ``_ASCENT_SHARE`` of the time spent so far (at least ``_ASCENT_MIN_S``), ending
        ``reserve`` [s] before the time limit. Nothing to do without those prices, once a fine
        LP is solved (its optimum is at least every such bound) or when the best plan is
        certified; it stops once the plan is certified. ``budget_s`` [s] replaces that share.
        Run at the end of the call, and right after the coarse stage when the fine LPs are
        predicted to take at least ``_EARLY_ASCENT_MIN_S`` (session 28 ran it there always: two
        1,000-car cells faster, others up to 1.3 s slower where it certified nothing; session 30
        with a quarter of the fine LPs' predicted time and the stop at the certificate:
        docs/bench_optimize.md)."""
        if self.lagrangian is None or self.lp_solved or self.best.plan is None or self.certified():
            return
        t = time.perf_counter()
        budget = max(_ASCENT_SHARE * (t - self.t0), _ASCENT_MIN_S) if budget_s is None else budget_s
        stop_at = min(self.deadline - reserve, t + budget)
        if stop_at <= t:
            return
        o, obj = self.form.options, self.best.objective
        # Up to the bound that certifies the plan (:func:`_certified`), no further: 0.24 s of a
        # 1.1 s call went on raising a bound past it (200 cars x 288 slots, tree, unbalance).
        enough = obj - max(o.mip_rel_gap * abs(obj), o.mip_abs_gap) * (1.0 - 1e-9)
        value, _, steps = improve_bound(*self.lagrangian, obj, stop_at, enough=enough)
        self._raise_bound(value)
        self.stages.append({"stage": "bound ascent", "status": f"{steps} steps", "bound": value,
                            "seconds": time.perf_counter() - self.t0})

    def lp_without_peak_stage(self, until: float = np.inf) -> None:
        """The LP without the peak term (HiGHS's LP with it can take far longer: the peak rows tie
        every slot together, 226 s against 0.6 s at 2,000 cars in 5-minute slots, measured). Its
        time sets the whole LP's budget; its solution is kept for :meth:`lp_without_peak_plans`;
        its optimum plus the base load's peak is a (weak) proven bound."""
        form, o = self.form, self.form.options
        if self._no_time("lp without peak"):
            return
        f0 = form.with_options(peak_eur_per_kw=0.0)
        mf0 = f0.matrix(relax=True)
        t = time.perf_counter()
        res = solve_matrix(f0, mf0, min(self.deadline - time.perf_counter() - 2 * self.reserve_now(),
                                        until - time.perf_counter()), keep_basis=True)
        self.lp0_seconds = time.perf_counter() - t
        self._account(res)
        if res.values is not None and res.status in ("optimal", "time_limit"):
            x = form.current_from_cells(mf0.current_a(res.values))
            energy = _energy_up_to_need(form, x)
            self.lp0 = (mf0, x, critical_peak_kw(form, energy), energy)
            self.lp0_basis = res.basis
            if res.status == "optimal":
                self._raise_bound(res.bound + o.peak_eur_per_kw * float(np.max(form.base_kw, initial=0.0)))
        self._record("lp without peak", res)

    def lp_without_peak_plans(self) -> None:
        """Real plans from the LP without the peak term, for when the whole LP gave none (or did
        not finish): its own solution rounded, and one from scratch under the critical peak,
        least laxity first (the LP without its peak term may put energy anywhere among equal
        prices). Only then: in simulation, offering them beside the whole LP's plan let plans
        of equal or marginally lower horizon objective win that served the next steps worse
        (10 % more peak, measured)."""
        mf = self.mf
        _, x, (peak_kw, _), energy = self.lp0
        plan, objective = self.real_plan(mf, x, caps=(np.inf,))
        self.best.offer(plan, objective, "lp without peak+rounding")
        self.least_laxity_plan(peak_kw, energy)
        self.stages.append({"stage": "plans without peak", "status": "made", "objective": self.best.objective,
                            "seconds": time.perf_counter() - self.t0})

    def whole_lp_basis(self):
        """The LP without the peak term's optimal basis as a start for the whole LP
        (:func:`~nowblock.milp.highs_fast.extend_basis`), or None."""
        return extend_basis(self.lp0_basis, self.lp0[0], self.mf)

    def mean_peak_stage(self, with_plan: bool = True) -> None:
        """The LP with the peak priced on the mean power over the critical interval
        (:func:`~nowblock.milp.peak.mean_peak_matrix`), cold, within the whole LP's budget: its
        optimum is a proven bound (Lagrange's); with
        ``with_plan``, its solution made a real plan under its own peak (:func:`real_plan`; under
        the critical peak instead: 2 s of raising the cap at 1,000 cars x 288 slots, for a worse
        plan; a second, uncapped rounding: twice the time, the same plan on the cells tried)."""
        if self.left() <= 0.01:
            return
        form = self.form
        mf0, _, (_, first_slots), _ = self.lp0
        mfm, constant = mean_peak_matrix(form, mf0, first_slots)
        t = time.perf_counter()
        # Cold: from the first stage's basis it took 0.9-1.2 times as long on three cells, 0.6 on
        # one and past 20 s against 1.9 s cold on another (2000-15%-tree-15min, flat costs).
        res = solve_matrix(form, mfm, min(self.left(), max(_PEAK_LP_FACTOR * self.lp0_seconds, _PEAK_LP_MIN_S)))
        self._account(res)
        self.mean_peak_done = True
        value, objective = float("nan"), float("nan")
        if res.status == "optimal":
            value = float(res.bound) + constant
            self._raise_bound(value)
            if with_plan:
                x = form.current_from_cells(mfm.current_a(res.values))
                plan, objective = self.real_plan(self.mf, x, caps=(plan_peak_kw(form, x),))
                self.best.offer(plan, objective, "mean-peak lp+rounding", wins_ties=True)
        self.stages.append({"stage": "mean-peak lp", "status": res.status, "bound": value, "objective": objective,
                            "seconds": time.perf_counter() - self.t0, "stage_seconds": time.perf_counter() - t})

    def pyomo_stage(self) -> None:
        """The MILP through Pyomo (no LP stage), made into real plans; its bound."""
        from nowblock.milp.pyomo_model import solve_pyomo

        form = self.form
        res = solve_pyomo(form.with_options(time_limit_s=max(self.left(), 1e-3)))
        self.mf = res.matrix
        self._account(res)
        objective = float("nan")
        if res.values is not None and res.status in ("optimal", "time_limit"):
            x = form.current_from_cells(res.matrix.current_a(res.values))
            plan, objective = self.real_plan(res.matrix, x)
            self.best.offer(plan, objective, "milp+rounding")
            self._raise_bound(res.bound)
        self._record("milp", res, objective)


def solve_formulation(form: Formulation, *, warm_start_a=None, started_at: float | None = None) -> Schedule:
    """Solve one planning step and return a real, re-checked plan (module docstring).

    Parameters
    ----------
    form : Formulation
    warm_start_a : ndarray or callable, optional
        A previous plan shifted onto these slots, dense (n, T) [A], or a function returning it
        (or None), called only if the MILP stage runs: offered as a start and as a candidate.
    started_at : float, optional
        ``time.perf_counter()`` when the call began (the time limit counts from there);
        default now.

    Returns
    -------
    Schedule
        Never raises on solver trouble (falls back); bad options still raise.
    """
    t0 = time.perf_counter() if started_at is None else float(started_at)
    o = form.options
    backend = o.backend
    deadline = t0 + o.time_limit_s
    if len(form.cells[0]) == 0:
        return Schedule(form=form, plan_a=np.zeros((form.n_cars, form.n_slots)), status="optimal", objective=0.0,
                        bound=0.0, mip_gap=0.0, solve_seconds=0.0, build_seconds=0.0, backend=backend,
                        detail="nothing to plan", method="none", seconds=time.perf_counter() - t0)
    if not form.can_switch_on.any():
        # No car's minimum fits its fuses in any slot: all zeros is the only real plan, so it is
        # optimal (the LPs, without "0 or >= min", bound it far below: 23 % at 30 cars x 96 slots).
        zero = np.zeros((form.n_cars, form.n_slots))
        objective = plan_objective(form, form.matrix(relax=True), zero)
        return Schedule(form=form, plan_a=zero, status="optimal", objective=objective, bound=objective,
                        mip_gap=0.0, solve_seconds=0.0, build_seconds=0.0, backend=backend,
                        detail="the only plan: no car's minimum current fits its fuses in any slot (all 0 A)",
                        method="none", seconds=time.perf_counter() - t0)
    run = _Run(form, t0, deadline, reserve_seconds(form))
    try:
        # Fine slot grids of large blocks: the LP on 15-minute slots first (a real fine plan and a Lagrange
        # bound in seconds, nowblock.milp.coarse); the fine LPs then within a budget it sets.
        until = np.inf
        m = coarse_factor(form) if backend == "highs" else 1
        predicted = 0.0
        coarse = m > 1 and len(form.cells[0]) >= COARSE_MIN_CELLS
        # With unbalance rows the coarse plan alone: there the fine LP was slow (4-5 s at 200 cars
        # x 288 slots on a tree, 10-28 s at 1,000) and its plans, rounded under the unbalance rows,
        # no better than the coarse stage's, whose currents, held over three fine slots, round
        # better (better on 18 of 24 such cells of the instance matrix, docs/bench_optimize.md).
        unbalance = run.mf.rows.get("unbalance") if run.mf is not None else None
        coarse_only = coarse and unbalance is not None and unbalance.stop > unbalance.start
        if m > 1 and (coarse or o.milp_prove):  # smaller (planned once): one more candidate (COARSE_MIN_CELLS)
            run.coarse_stage(m)
        if coarse:
            # The fine LP took about m^2 times the coarse LP (5-20x at m = 3 on the instance
            # matrix): it runs if that fits in half the time left, within three times that.
            predicted = m * m * run.coarse_seconds
            until = time.perf_counter() + max(3.0 * predicted, o.milp_effort * (time.perf_counter() - t0),
                                              _PEAK_LP_MIN_S)
        if coarse and not coarse_only and predicted >= _EARLY_ASCENT_MIN_S and not run.certified():
            # Before fine LPs predicted to take long, the coarse plan's certificate is sought for
            # a quarter of their time: where it certifies, the call ends 3-5 x sooner with a
            # plan within the gap it aims for (1000-15%-flat-5min-load 9.4 -> 1.7 s, 4702.7 ->
            # 4731.4 EUR); where not, the fine LPs run a quarter later (docs/bench_optimize.md,
            # session 30). Below a second of fine LP, their plan is worth its time (200 cars,
            # 0.3-0.6 % better plans).
            run.bound_ascent(_ASCENT_RESERVE_S, budget_s=0.25 * predicted)
        if run.certified():
            pass
        elif coarse_only and run.best.plan is not None:
            run.stages.append({"stage": "fine lp", "status": "skipped (unbalance rows: the coarse plan)",
                               "seconds": time.perf_counter() - t0})
        elif np.isfinite(until) and predicted > 0.5 * run.left():
            # The MILP stage holds the fine LP: it is skipped with it (see below).
            run.stages.append({"stage": "fine lp", "status": "skipped (predicted beyond half the time left)",
                               "seconds": time.perf_counter() - t0})
        elif backend == "pyomo":
            run.pyomo_stage()
        elif o.peak_eur_per_kw > 0 and form.n_slots > 1:
            # The LP without the peak term first (fast: a bound and a fallback in hand). If its
            # peak is near the critical peak, the whole LP from its basis (a few dual simplex
            # iterations repair the peak rows); if not, that warm start is slower than a cold
            # whole LP, which takes 4-6 times the LP without the peak term (measured), and the
            # LP with the peak priced on the mean (the same bound on every cell tried, from the
            # same basis in about the first LP's time) gives the plan. The plans without the
            # peak term only if the whole LP does not finish.
            run.lp_without_peak_stage(until)
            if run.lp0 is not None:
                warm = run.lp0_basis is not None and warm_start_pays(form, run.lp0[1], run.lp0[2][0])
                if warm or run.lp0[0].num_nz <= _COLD_LP_MAX_NZ:
                    run.lp_stage(budget=min(run.left(), until - time.perf_counter(),
                                            max(_PEAK_LP_FACTOR * run.lp0_seconds, _PEAK_LP_MIN_S)),
                                 basis=run.whole_lp_basis() if warm else None)
                else:
                    run.mean_peak_stage()
            if run.lp0 is not None and not run.lp_solved:
                run.lp_without_peak_plans()
                if not run.certified() and not run.mean_peak_done:
                    run.mean_peak_stage(with_plan=False)
        else:
            run.lp_stage(budget=min(run.left(), until - time.perf_counter()))
    except SolverOptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any solver trouble must still leave a safe schedule
        return fallback_schedule(form, reason=f"solver error: {type(exc).__name__}: {exc}",
                                 build_seconds=time.perf_counter() - t0, backend=backend,
                                 seconds=time.perf_counter() - t0)
    best, bound, stages = run.best, run.bound, run.stages
    solve_s, build_s, run_s = run.solve_s, run.build_s, run.run_s
    mf = run.mf
    if best.plan is None:
        need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
        # The uncapped plan first (in hand, timed: this machine's speed now), then the one under
        # the critical peak (2,000 cars, tree, unbalance: 9,385 vs 33,217 EUR, 4-6 x as long) if
        # the time left holds _CAPPED_PLAN_FACTOR uncapped plans; its cap raises end
        # _CAPPED_TAIL_PLANS of them before the deadline, for the balanced fills after them
        # cannot stop. On a fixed reserve, raising to the deadline, it overran under load
        # (1,000 x 288, 30 s limit, load 24: 30.6-36.8 s, session 37).
        t = time.perf_counter()
        plan = make_plan(form, None, peak_kw=np.inf, shave_until=deadline - _SCHEDULE_SECONDS)
        best.offer(plan, plan_objective(form, mf, plan.current_a), "greedy")
        uncapped_s = time.perf_counter() - t
        capped = deadline - time.perf_counter() > _CAPPED_PLAN_FACTOR * uncapped_s + _SCHEDULE_SECONDS
        which = "greedy plan, earliest deadline first, no peak cap (no time for one)"
        if capped:
            plan = make_plan(form, None, peak_kw=critical_peak_kw(form, need)[0],
                             shave_until=deadline - _SCHEDULE_SECONDS,
                             raise_until=deadline - _CAPPED_TAIL_PLANS * uncapped_s - _SCHEDULE_SECONDS)
            best.offer(plan, plan_objective(form, mf, plan.current_a), "greedy", wins_ties=True)
            which = ("greedy plan under the critical peak, least laxity first" if best.plan is plan else
                     "greedy plan, earliest deadline first (cheaper than the one under the critical peak)")
        return plan_schedule(form, best.plan, status="fallback", objective=best.objective, bound=float("nan"),
                             mip_gap=float("inf"), solve_seconds=solve_s, build_seconds=build_s, backend=backend,
                             detail=which + "; "
                             + ", ".join(f"{s['stage']}: {s['status']}" for s in stages),
                             method="greedy", seconds=time.perf_counter() - t0,
                             extra={"stages": stages, "run_call_seconds": run_s})

    # Polish the best plan (round it again) while that lowers its objective: it is what the MILP
    # stage's gain had been on every large cell tried (nowblock.milp.plans.polish).
    if not _certified(best.objective, bound, o) and np.isfinite(best.objective):
        t = time.perf_counter()
        plan, objective, rounds = polish(form, mf, best.plan, best.objective, _POLISH_ROUNDS,
                                         lambda: deadline - time.perf_counter() > 1.5 * run.plan_s + 0.02,
                                         until=deadline - _SCHEDULE_SECONDS)
        run.plan_s = max(run.plan_s, (time.perf_counter() - t) / max(rounds + 1, 1))
        if rounds:
            best.offer(plan, objective, best.method + "+polish")
        stages.append({"stage": "polish", "status": f"{rounds} rounds", "objective": best.objective,
                       "seconds": time.perf_counter() - t0})

    # The MILP stage, when the LP plan is not certified and the budget allows.
    spent = time.perf_counter() - t0
    budget = min(run.left(), max(o.milp_effort * spent, o.milp_min_s)) \
        if o.milp_effort > 0 else 0.0
    # Only when some car got less than the LP gave it: on/off and whole-step decisions the
    # rounding could not make. A plan that gives every car its LP energy is off the bound by
    # granularity alone (a pilot step more peak, a step of overshoot), which a MILP over the
    # first slots does not change (measured on the instance matrix: docs/bench_optimize.md).
    # And only if an LP of the fine model finished: the MILP holds it (a coarse plan alone: no).
    # A polished plan is its own relaxation's rounding and misses nothing of it, so the stage
    # does not run after a polish. Measured against the first LP instead (session 30): better
    # plans on 2 of 11 matrix cells (443.5 -> 440.8, 393.2 -> 389.1 EUR), but the closed loop's
    # workplace week took 24.5 s instead of 14.0 s for the same demand met (0.9487 / 0.9493).
    # A small block planned once (``milp_prove``: ``optimize``, not the receding horizon) gets the
    # whole MILP: binaries on every slot, after a polish too, for at least _SMALL_MILP_MIN_S. An
    # outside test (a grid engineer's blocks of 5-8 cars over 4 h) found plans 10-37 % off their
    # bound and up to 3.6 kWh short of what the block allowed, returned in 0.01-0.1 s of a 10 s
    # limit: the polished plan skipped the stage, and binaries on the first 8 slots could not
    # place the 6 A steps later on. Measured on its 84 instances (docs/bench_optimize.md, session
    # 34): 60 -> 81 certified, cars short of the best possible plan 19 -> 2, median call 0.01 s.
    n_window = form.n_binary_slots
    whole = (o.milp_prove and backend == "highs" and mf is not None and form.n_binary_slots > 0
             and _milp_binaries(form, mf, form.n_slots) <= _MILP_MAX_BINARIES)
    if whole:
        n_window = form.n_slots
        budget = min(run.left(), max(budget, _SMALL_MILP_MIN_S))
    if (backend == "highs" and not _certified(best.objective, bound, o) and budget > 0.005
            and (best.plan.missing_kwh > 1e-6 or whole) and form.n_binary_slots > 0 and (run.lp_solved or run.lp0 is not None)
            and _milp_binaries(form, mf, n_window) <= _MILP_MAX_BINARIES):
        try:
            res, candidates = milp_stage(run, mf, warm_start_a, time.perf_counter() + budget, n_window,
                                         every_cell=whole and len(form.cells[0]) <= _MILP_MAX_BINARIES)
        except SolverOptionError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the LP plan
            stages.append({"stage": "milp", "status": f"error: {type(exc).__name__}: {exc}"})
        else:
            for method, plan, objective in candidates:
                best.offer(plan, objective, method)
            solve_s += res.solve_seconds
            build_s += res.build_seconds
            run_s += res.run_call_seconds
            if np.isfinite(res.bound):
                bound = max(bound, res.bound) if np.isfinite(bound) else res.bound
            stages.append({"stage": "milp", "status": res.status, "relaxed_objective": res.objective,
                           "bound": res.bound, "budget_seconds": budget,
                           "objective": min((c[2] for c in candidates if c[0] in ("milp", "milp+rounding")), default=np.nan),
                           "seconds": time.perf_counter() - t0})

    # A bound from the coarse stage alone (no fine LP finished): raised by subgradient ascent on
    # its prices for a share of the time spent. It changes no plan, only how far from optimal the
    # call can say its plan is (1,000 cars, 15 %, flat, 5 min, load, unbalance: gap 2.8 % ->
    # 1.0 % in 1 s, docs/bench_optimize.md).
    if not _certified(best.objective, bound, o):
        run.bound_ascent(_ASCENT_RESERVE_S)
        if np.isfinite(run.bound) and (not np.isfinite(bound) or run.bound > bound):
            bound = run.bound

    gap = _gap(best.objective, bound)
    # Not certified: stopped by the time limit if (nearly) all of it went, else by the stages'
    # own budgets ("suboptimal").
    timed_out = run.left() <= 0.01
    status = "optimal" if _certified(best.objective, bound, o) else ("time_limit" if timed_out else "suboptimal")
    return plan_schedule(form, best.plan, status=status, objective=best.objective, bound=bound, mip_gap=gap,
                         solve_seconds=solve_s, build_seconds=build_s, backend=backend,
                         detail=f"{best.method}; " + ", ".join(f"{s['stage']}: {s['status']}" for s in stages),
                         method=best.method, seconds=time.perf_counter() - t0,
                         extra={"stages": stages, "run_call_seconds": run_s})


def optimize(site, sessions: pd.DataFrame, start=None, horizon="24h", step="15min", base_load=None, prices=None,
             **options) -> Schedule:
    """Plan every session's current [A] over ``horizon`` in slots of ``step``.

    Parameters
    ----------
    site : Site
    sessions : pandas.DataFrame
        The contract's sessions frame (needs known).
    start : timestamp or str, optional
        First slot start, timezone-aware (a ``Timestamp``, or ISO 8601 text with a UTC offset);
        default: the first arrival floored to ``step``.
    horizon, step : str or Timedelta
        Durations with a unit, such as ``"24h"`` and ``"15min"`` (a bare number is refused:
        pandas would read it as nanoseconds).
    base_load : pandas.Series or pandas.DataFrame, optional
        The block's other load [kW] over timezone-aware times (a DataFrame: its column ``kw``,
        with a ``time`` column or a time index), checked as :class:`~nowblock.Scenario` checks
        it (refused 100 times past the grid connection: W given for kW); every value finite.
        None: 0 kW. An empty series is refused, as is one a year off, or one that misses a
        time when some car is plugged in (ending early, a hole): an unknown load of the block
        is not 0 kW, and no value from other hours is safe; the error names the first such
        interval. Where no car is plugged in a missing value is 0 kW, with one warning
        (:func:`~nowblock.block.scenario.cover_window`).
    prices : pandas.Series or pandas.DataFrame, optional
        Energy price [EUR/kWh] over timezone-aware times (a DataFrame: its column
        ``eur_per_kwh``), checked the same way. None: 0 EUR/kWh. Empty, or covering none of
        the horizon: refused; covering part of it: the missing parts (ends or holes) are
        taken as their mean, with one warning.
    **options
        :class:`~nowblock.milp.options.OptimizeOptions` fields, for example ``sharing="fair"``,
        ``time_limit_s=5`` (bounds the whole call), ``mip_rel_gap=0.01``,
        ``current_step_a=0.1``, ``backend="pyomo"``.

    Returns
    -------
    Schedule
        A real plan (see its ``status``, ``method``, ``objective``, ``bound``, ``mip_gap``).

    Raises
    ------
    TypeError
        An argument of the wrong kind (a number for ``step``, a list for ``base_load``, an
        unknown option); the message starts with the argument's name.
    ValueError
        A bad value: ``start`` without a UTC offset, ``step`` that is not a duration, a
        ``base_load`` or ``prices`` with times without an offset or missing or infinite values,
        a base load in W (:class:`~nowblock.block.scenario.ScenarioError`), a bad session row
        (:class:`~nowblock.block.sessions.SessionsError`); the message names the argument.
    """
    t0 = time.perf_counter()
    opts = OptimizeOptions.from_kwargs(**options)
    # Checked here, not deep in the adapter: a naive or NaN series used to be planned around
    # silently wrong (or hang HiGHS), a wrong type to fail in numba without naming the argument.
    step = check_duration(step, "step")
    horizon = check_duration(horizon, "horizon")
    start = check_start(start)
    base_load = check_series(base_load, "base_load", site)
    prices = check_series(prices, "prices", site)
    # A series a year off was held flat at its last value (+30 A on a 45 A grid phase, outside test).
    base_load, prices = cover_horizon(base_load, prices, site, sessions, start, horizon, step)
    form = from_sessions(site, sessions, start=start, horizon=horizon, step=step, base_load=base_load,
                         prices=prices, options=opts)
    return solve_formulation(form, started_at=t0)
