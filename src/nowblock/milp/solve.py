"""One planning step: formulation -> LP -> real plan (-> MILP -> real plan) -> :class:`Schedule`.

The time limit (``options.time_limit_s``) bounds the whole call, from the moment ``optimize``
(or the caller of :func:`solve_formulation`, through ``started_at``) starts:

1. **LP stage**: the LP relaxation (no binaries; the fuse rooms floored to the pilot step, so
   its optimum bounds every plan a charger can follow). Its solution becomes a real plan
   (:func:`nowblock.milp.rounding.make_plan`); the plan's objective is computed from the plan.
2. If that plan is not certified (more than ``mip_rel_gap`` and ``mip_abs_gap`` from the LP
   bound), gives some car less than the LP did, and ``milp_effort`` > 0, **MILP stage**: HiGHS with the currents of the first
   ``binary_slots`` slots in whole pilot steps and on/off binaries on those cells where a limit
   can bind, started from the best plan so far, within ``milp_effort`` times the time spent so
   far or ``milp_min_s``, whichever is longer (never past the time limit). Its solution is
   made real the same way; its bound holds for every plan in pilot steps.
3. The best real plan by objective is returned (a MILP incumbent that rounds worse never
   replaces the LP plan), with the best proven bound, its gap, ``status`` and ``method``.

Without an LP solution (the time limit, or HiGHS found nothing) the plan is the
earliest-deadline greedy of :func:`~nowblock.milp.rounding.make_plan`; if HiGHS raises, the
baseline heuristic ``options.fallback`` played forward (:func:`fallback_schedule`).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from nowblock.milp.adapters import from_sessions
from nowblock.milp.formulation import Formulation, OptimizeOptions
from nowblock.milp.highs_fast import SolveResult, SolverOptionError, solve_matrix
from nowblock.milp.matrix import in_pilot_steps, is_feasible, plan_columns, plan_objective
from nowblock.milp.rounding import Plan, make_plan
from nowblock.milp.schedule import Schedule, fallback_schedule, plan_schedule


def run_backend(form: Formulation, *, relax: bool = False, warm_start_a=None) -> SolveResult:
    """Solve ``form`` with the backend its options name, in one solve (no LP stage, no rounding);
    ``warm_start_a`` as in :func:`~nowblock.milp.highs_fast.solve_highs`."""
    if form.options.backend == "pyomo":
        from nowblock.milp.pyomo_model import solve_pyomo

        return solve_pyomo(form, relax=relax)
    from nowblock.milp.highs_fast import solve_highs

    return solve_highs(form, relax=relax, warm_start_a=warm_start_a)


def reserve_seconds(form: Formulation) -> float:
    """Time [s] kept back from the solver stages for making and checking the plan: 10 ms plus
    1 us per (car, slot) pair (measured: the rounding takes ~0.2 us per pair, the re-check and
    the objective about as much again; docs/bench_optimize.md)."""
    return 0.01 + 1e-6 * form.n_cars * form.n_slots


class _Best:
    """The best real plan so far, by objective, with how it was found."""

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.objective = np.inf
        self.method = ""

    def offer(self, plan: Plan, objective: float, method: str) -> None:
        if plan is not None and objective < self.objective - 1e-12:
            self.plan, self.objective, self.method = plan, objective, method


def _certified(objective: float, bound: float, o: OptimizeOptions) -> bool:
    """Whether the bound proves ``objective`` within ``mip_rel_gap`` or ``mip_abs_gap`` [EUR]."""
    return np.isfinite(bound) and (_gap(objective, bound) <= o.mip_rel_gap or objective - bound <= o.mip_abs_gap)


def _gap(objective: float, bound: float) -> float:
    if not np.isfinite(bound) or not np.isfinite(objective):
        return float("inf")
    return max(objective - bound, 0.0) / max(abs(objective), 1e-9)


def _peak_kw(form: Formulation, x: np.ndarray) -> float:
    """The highest base load plus charging power [kW] of a dense plan ``x`` [A]."""
    return float((np.asarray(form.base_kw, dtype=float) + form.kw_per_a @ x).max(initial=0.0))


_PEAK_LP_SHARE = 0.6  # of the time left, for the LP with its peak term (the rest: the LP without)


def critical_peak_kw(form: Formulation, energy_kwh: np.ndarray) -> float:
    """The least peak power [kW] any plan can have that gives every car ``energy_kwh`` [kWh]: for
    every first ``k`` slots, the energy cars cannot get after them, spread over them, plus their
    mean base load; the largest over ``k`` (Yao, Demers and Shenker's critical interval, from the
    start of the horizon)."""
    kwh = form.energy_per_a_kwh
    energy = np.asarray(energy_kwh, dtype=float)
    later = np.cumsum((form.upper_a * kwh)[:, ::-1], axis=1)[:, ::-1]  # the most a car can get from slot k on
    must = np.maximum(energy[:, None] - np.c_[later[:, 1:], np.zeros(form.n_cars)], 0.0).sum(axis=0)
    base = np.asarray(form.base_kw, dtype=float)
    k = np.arange(1, form.n_slots + 1)
    return float(np.max(must / np.cumsum(form.slot_h) + np.cumsum(base) / k, initial=0.0))


def real_plan(form: Formulation, mf, x: np.ndarray, caps=None) -> tuple[Plan, float]:
    """The best of real plans made from relaxed currents ``x`` [A], with its objective [EUR]: one
    for each power cap in ``caps`` [kW] (default: the relaxation's own peak, kept while it can
    be, and none: the steps stay in the slots the relaxation chose, worth it when prices differ
    by more than the peak costs; measured both ways on the instance matrix,
    docs/bench_optimize.md)."""
    best, best_obj = None, np.inf
    for peak in (_peak_kw(form, x), np.inf) if caps is None else caps:
        plan = make_plan(form, x, peak_kw=peak)
        obj = plan_objective(form, mf, plan.current_a)
        if obj < best_obj - 1e-12:
            best, best_obj = plan, obj
    return best, best_obj


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
    reserve = reserve_seconds(form)
    stages: list[dict] = []
    solve_s = build_s = run_s = 0.0
    bound = float("nan")
    timed_out = False
    best = _Best()
    try:
        if backend == "pyomo":
            from nowblock.milp.pyomo_model import solve_pyomo

            first = solve_pyomo(form.with_options(time_limit_s=max(deadline - time.perf_counter() - reserve, 1e-3)))
            mf = first.matrix
        else:
            mf = form.matrix(relax=True)
            # With a peak term HiGHS's LP can take far longer than without (the peak rows tie every
            # slot together: 226 s against 0.6 s at 2,000 cars in 5-minute slots, measured); it
            # gets part of the time, the LP without them the rest if it does not finish.
            share = _PEAK_LP_SHARE if mf.cols["peak_kw"].stop > mf.cols["peak_kw"].start else 1.0
            first = solve_matrix(form, mf, share * (deadline - time.perf_counter() - reserve))
    except SolverOptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any solver trouble must still leave a safe schedule
        return fallback_schedule(form, reason=f"solver error: {type(exc).__name__}: {exc}",
                                 build_seconds=time.perf_counter() - t0, backend=backend,
                                 seconds=time.perf_counter() - t0)
    solve_s += first.solve_seconds
    build_s += first.build_seconds
    run_s += first.run_call_seconds
    timed_out |= first.status in ("time_limit", "no_solution")
    stage_name = "milp" if backend == "pyomo" else "lp"
    if first.values is not None and first.status in ("optimal", "time_limit"):
        x = form.current_from_cells(first.matrix.current_a(first.values))
        plan, objective = real_plan(form, mf, x)
        best.offer(plan, objective, f"{stage_name}+rounding")
        if np.isfinite(first.bound):
            bound = first.bound
        stages.append({"stage": stage_name, "status": first.status, "relaxed_objective": first.objective,
                       "objective": objective, "seconds": time.perf_counter() - t0})
    else:
        stages.append({"stage": stage_name, "status": first.status, "seconds": time.perf_counter() - t0})
        second = None
        if backend == "highs" and o.peak_eur_per_kw > 0 and deadline - time.perf_counter() - reserve > 0.01:
            try:
                f0 = form.with_options(peak_eur_per_kw=0.0)
                second = solve_matrix(f0, f0.matrix(relax=True), deadline - time.perf_counter() - reserve)
            except SolverOptionError:
                raise
            except Exception:  # noqa: BLE001 - the greedy plan below
                second = None
        if second is not None and second.values is not None and second.status in ("optimal", "time_limit"):
            solve_s += second.solve_seconds
            build_s += second.build_seconds
            run_s += second.run_call_seconds
            x = form.current_from_cells(second.matrix.current_a(second.values))
            plan, objective = real_plan(form, mf, x, caps=(np.inf,))
            best.offer(plan, objective, "lp without peak+rounding")
            # The LP without its peak term may put energy anywhere among equal prices: a plan
            # from scratch under the least peak that gives every car its LP energy, least laxity
            # first, is often far lower in peak.
            energy = np.minimum((x * form.energy_per_a_kwh).sum(axis=1), np.maximum(form.need_kwh, 0.0))
            flat = make_plan(form, None, peak_kw=critical_peak_kw(form, energy), target_kwh=energy)
            best.offer(flat, plan_objective(form, mf, flat.current_a), "least laxity under the critical peak")
            if np.isfinite(second.bound):
                # The peak is at least the highest base load: a weak bound, but a proven one.
                bound = second.bound + o.peak_eur_per_kw * float(np.max(form.base_kw, initial=0.0))
            stages.append({"stage": "lp without peak", "status": second.status, "relaxed_objective": second.objective,
                           "objective": objective, "seconds": time.perf_counter() - t0})
            gap = _gap(best.objective, bound)
            return plan_schedule(form, best.plan, status="optimal" if _certified(best.objective, bound, o)
                                 else "time_limit", objective=best.objective, bound=bound, mip_gap=gap,
                                 solve_seconds=solve_s, build_seconds=build_s, backend=backend,
                                 detail=f"{best.method}; " + ", ".join(f"{s['stage']}: {s['status']}" for s in stages),
                                 method=best.method, seconds=time.perf_counter() - t0,
                                 extra={"stages": stages, "run_call_seconds": run_s})
        need = np.maximum(np.nan_to_num(np.asarray(form.need_kwh, dtype=float)), 0.0)
        plan = make_plan(form, None, peak_kw=critical_peak_kw(form, need))
        best.offer(plan, plan_objective(form, mf, plan.current_a), "greedy")
        return plan_schedule(form, best.plan, status="fallback", objective=best.objective, bound=float("nan"),
                             mip_gap=float("inf"), solve_seconds=solve_s, build_seconds=build_s, backend=backend,
                             detail=f"greedy earliest-deadline plan (HiGHS: {first.status}, {first.solver_status})",
                             method="greedy", seconds=time.perf_counter() - t0,
                             extra={"stages": stages, "run_call_seconds": run_s})

    # The MILP stage, when the LP plan is not certified and the budget allows.
    spent = time.perf_counter() - t0
    budget = min(deadline - time.perf_counter() - reserve, max(o.milp_effort * spent, o.milp_min_s)) \
        if o.milp_effort > 0 else 0.0
    # Only when some car got less than the LP gave it: on/off and whole-step decisions the
    # rounding could not make. A plan that gives every car its LP energy is off the bound by
    # granularity alone (a pilot step more peak, a step of overshoot), which a MILP over the
    # first slots does not change (measured on the instance matrix: docs/bench_optimize.md).
    if (backend == "highs" and not _certified(best.objective, bound, o) and budget > 0.005
            and best.plan.missing_kwh > 1e-6 and form.n_binary_slots > 0):
        try:
            res, candidates = _milp_stage(form, mf, best, warm_start_a, budget)
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
            # Stopped by the effort budget is not stopped by the time limit.
            timed_out |= res.status in ("time_limit", "no_solution") and (
                time.perf_counter() >= deadline - reserve - 1e-3)
            stages.append({"stage": "milp", "status": res.status, "relaxed_objective": res.objective,
                           "bound": res.bound, "budget_seconds": budget,
                           "objective": min((c[2] for c in candidates if c[0] == "milp+rounding"), default=np.nan),
                           "seconds": time.perf_counter() - t0})

    gap = _gap(best.objective, bound)
    status = "optimal" if _certified(best.objective, bound, o) else ("time_limit" if timed_out else "suboptimal")
    return plan_schedule(form, best.plan, status=status, objective=best.objective, bound=bound, mip_gap=gap,
                         solve_seconds=solve_s, build_seconds=build_s, backend=backend,
                         detail=f"{best.method}; " + ", ".join(f"{s['stage']}: {s['status']}" for s in stages),
                         method=best.method, seconds=time.perf_counter() - t0,
                         extra={"stages": stages, "run_call_seconds": run_s})


def _milp_stage(form: Formulation, lp_matrix, best: _Best, warm_start_a, budget_s: float):
    """HiGHS on the MILP from the best plan so far; returns the solver result and the real plans it
    gave: (method, plan, objective). On/off binaries where a limit row is stated (could bind) in
    the binary window: elsewhere every car can take its rounded current whatever the others do
    (the stated rows do not depend on the binaries). In the window the currents are whole pilot
    steps (:func:`~nowblock.milp.matrix.in_pilot_steps`): its bound then holds for what a
    charger can be sent, and small blocks are solved to the step."""
    mask = np.zeros(len(form.cells[0]), dtype=bool)
    mask[lp_matrix.fuse_cells] = True
    mf = form.matrix(binary_mask=mask)
    window = np.nonzero(form.cells[1] < form.n_binary_slots)[0]
    mf_steps = in_pilot_steps(mf, window, float(form.options.current_step_a))
    car, slot = form.cells
    candidates = []
    starts = [best.plan]
    if callable(warm_start_a):
        warm_start_a = warm_start_a()
    if warm_start_a is not None:
        warm = make_plan(form, np.asarray(warm_start_a, dtype=float))
        candidates.append(("warm start", warm, plan_objective(form, mf, warm.current_a)))
        starts.append(warm)
    cur = mf.cols["current_a"]
    vs = []
    for p in starts:
        v = plan_columns(form, mf, p.current_a[car, slot])
        if is_feasible(mf, v):
            v[cur] /= mf_steps.current_scale  # a real plan is in whole steps: whole numbers here
            vs.append(v)
    start = min(vs, key=lambda v: float(mf_steps.cost @ v)) if vs else None
    res = solve_matrix(form, mf_steps, budget_s, start)
    if res.values is not None:
        x = form.current_from_cells(mf_steps.current_a(res.values))
        plan, objective = real_plan(form, mf, x)
        candidates.append(("milp+rounding", plan, objective))
    return res, candidates


def optimize(site, sessions: pd.DataFrame, start=None, horizon="24h", step="15min", base_load=None, prices=None,
             **options) -> Schedule:
    """Plan every session's current [A] over ``horizon`` in slots of ``step``.

    Parameters
    ----------
    site : Site
    sessions : pandas.DataFrame
        The contract's sessions frame (needs known).
    start : timestamp, optional
        First slot start (default: the first arrival floored to ``step``).
    horizon, step : str or Timedelta
    base_load : pandas.Series, optional
        The block's other load [kW] over UTC time.
    prices : pandas.Series, optional
        Energy price [EUR/kWh] over UTC time.
    **options
        :class:`~nowblock.milp.options.OptimizeOptions` fields, for example ``sharing="fair"``,
        ``time_limit_s=5`` (bounds the whole call), ``mip_rel_gap=0.01``,
        ``current_step_a=0.1``, ``backend="pyomo"``.

    Returns
    -------
    Schedule
        A real plan (see its ``status``, ``method``, ``objective``, ``bound``, ``mip_gap``).
    """
    t0 = time.perf_counter()
    opts = OptimizeOptions.from_kwargs(**options)
    form = from_sessions(site, sessions, start=start, horizon=horizon, step=step, base_load=base_load,
                         prices=prices, options=opts)
    return solve_formulation(form, started_at=t0)
