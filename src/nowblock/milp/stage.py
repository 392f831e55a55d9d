"""The MILP stage of a planning step (:func:`nowblock.milp.solve.solve_formulation`, step 4).

HiGHS on the MILP with on/off binaries on the first ``binary_slots`` slots and their currents in
whole pilot steps, around the best real plan so far: the neighbourhood of that plan first
(:func:`around_start`), then the whole MILP when the options ask for its bound or the
neighbourhood held nothing better.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from nowblock.milp.formulation import Formulation
from nowblock.milp.highs_fast import SolveResult, solve_matrix
from nowblock.milp.matrix import MatrixForm, in_pilot_steps, is_feasible, plan_columns, plan_objective
from nowblock.milp.plans import as_plan, certified, relative_gap
from nowblock.milp.rounding import make_plan

MIN_SOLVE_S = 0.005  # [s] the stage starts no HiGHS solve with less time left than this


def milp_stage(run, lp_matrix, warm_start_a, stop_at: float, n_window: int | None = None,
               every_cell: bool = False):
    """HiGHS on the MILP from the best plan so far; returns the solver result and the real plans it
    gave: (method, plan, objective). ``run`` is the call's ``nowblock.milp.solve._Run`` (its
    formulation, best plan, time left, real plans). On/off binaries where a limit row is stated
    (could bind) in the binary window: elsewhere every car can take its rounded current whatever
    the others do (the stated rows do not depend on the binaries). In the window the currents are
    whole pilot steps (:func:`~nowblock.milp.matrix.in_pilot_steps`): its bound then holds for
    what a charger can be sent, and small blocks are solved to the step. HiGHS gets the time
    until ``stop_at`` (``time.perf_counter()``) left after building, never past ``run.left()``.
    ``n_window``: the binary window's slots (default ``form.n_binary_slots``); ``every_cell``:
    on/off binaries on every cell with a minimum, stated rows or not (a small block solved whole:
    a current below the minimum where no row binds is no plan either, and the MILP's optimum
    priced such currents below every real plan, -0.0997 against -0.0916 EUR)."""
    form, best = run.form, run.best
    n_window = form.n_binary_slots if n_window is None else int(n_window)
    mask = np.zeros(len(form.cells[0]), dtype=bool)
    mask[lp_matrix.fuse_cells] = True
    if every_cell:
        mask[:] = True
    window = np.nonzero(form.cells[1] < n_window)[0]
    # Binaries on every slot (a small block): the light sides' draws exact too, so that the MILP's
    # plans keep the unbalance rows with real draws and its optimum is the block's.
    mf = form.matrix(binary_mask=mask, split_useful=len(window) > 0, n_window=n_window,
                     exact_draws=n_window >= form.n_slots)
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

    def left() -> float:
        return min(stop_at - time.perf_counter(), run.left())

    res = solve_matrix(form, mf_steps, left(), None) if start is None else around_start(form, mf_steps, start, left)
    if res.values is not None:
        x = form.current_from_cells(mf_steps.current_a(res.values))
        plan, objective = run.real_plan(mf, x)
        candidates.append(("milp+rounding", plan, objective))
        own = as_plan(form, x)  # on every slot the solution is often a real plan: kept as it is
        if own is not None:
            candidates.append(("milp", own, plan_objective(form, mf, own.current_a)))
    return res, candidates


def around_start(form: Formulation, mf: MatrixForm, start: np.ndarray, left) -> SolveResult:
    """HiGHS on ``mf`` around the plan ``start`` (every column's value, integral where ``mf`` is):
    first its LP relaxation (a bound on every point of ``mf``), then the MILP with each integer
    column fixed where the relaxation agrees with ``start`` (a relaxation-induced neighbourhood,
    RINS), started from ``start``; then, if the plan is not certified by the relaxation, the
    whole MILP from the best plan for the rest of the time, for its bound with
    ``options.milp_prove``, else only when the neighbourhood held no better plan. Every solve
    gets ``left()`` [s]. Returns the best plan's result with the best bound, every solve's
    times, and status ``"optimal"`` only when that bound certifies the plan (else
    ``"time_limit"`` if a solve stopped at its limit, or ``"suboptimal"``).

    Why the neighbourhood first: on the closed loop's stages (500-column MILPs with 100-250
    integers) HiGHS on the whole MILP spent its 0.1 s in the root node's cut rounds before its
    own RINS ran, and improved the plan in 58 of 132 stages; the neighbourhood improved it in 86,
    in two thirds of the time (docs/bench_quality.md, "Session 31")."""
    relaxed = dataclasses.replace(mf, integrality=np.zeros_like(mf.integrality))
    runs = [solve_matrix(form, relaxed, left())]
    lp = runs[0]
    bound = lp.bound if lp.status == "optimal" else float("nan")
    before = float(mf.cost @ start)
    res = None
    if lp.values is not None and left() > MIN_SOLVE_S and not certified(before, bound, form.options):
        fixed = (mf.integrality > 0) & (np.abs(lp.values - start) <= 1e-6)
        col_lo, col_hi = mf.col_lo.copy(), mf.col_hi.copy()
        col_lo[fixed] = col_hi[fixed] = start[fixed]
        runs.append(solve_matrix(form, dataclasses.replace(mf, col_lo=col_lo, col_hi=col_hi), left(), start))
        res = runs[-1]
    # "Held no better plan": less than the certificate's tolerance better than the start.
    found = res is not None and res.values is not None
    stuck = not found or before - res.objective <= form.options.mip_rel_gap * abs(before)
    if ((form.options.milp_prove or stuck) and left() > MIN_SOLVE_S
            and not certified(res.objective if found else before, bound, form.options)):
        runs.append(solve_matrix(form, mf, left(), res.values if found else start))
        whole = runs[-1]
        bound = float(np.fmax(bound, whole.bound))  # either may be NaN (no proof)
        tie = 1e-9 * max(1.0, abs(res.objective)) if found else 0.0  # the same plan, rounded apart
        if whole.values is not None and (not found or whole.objective <= res.objective + tie):
            res, found = whole, True
    if not found:  # no plan from the stage (the start stands): its bound and times still count
        res = dataclasses.replace(runs[-1], values=None, objective=float("nan"))
    gap = relative_gap(res.objective, bound) if found else float("inf")
    if certified(res.objective if found else before, bound, form.options):
        status = "optimal"  # the plan returned, or the start if none: proven within the gap
    elif found:  # a neighbourhood solved to the end is no proof
        status = "time_limit" if any(r.status == "time_limit" for r in runs) else "suboptimal"
    else:
        status = "time_limit" if left() <= MIN_SOLVE_S else "no_solution"
    # Each solve's build time holds the matrix's own build once; the matrix was built once.
    return dataclasses.replace(res, status=status, bound=bound, mip_gap=gap, matrix=mf,
                               solve_seconds=sum(r.solve_seconds for r in runs),
                               build_seconds=sum(r.build_seconds for r in runs) - (len(runs) - 1) * mf.build_seconds,
                               run_call_seconds=sum(r.run_call_seconds for r in runs))
