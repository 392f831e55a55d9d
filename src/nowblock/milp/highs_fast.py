"""The fast path: the formulation's standard form passed to HiGHS in one call (highspy).

No per-element Python work: the matrix is built from whole arrays (:meth:`Formulation.matrix`)
and handed over as CSC arrays with ``Highs.passModel``. Every option is set with its status
checked, the model status is read explicitly, and the incumbent is kept when the time limit
stops the search.

:func:`solve_highs` solves the LP relaxation first and repairs its solution to "0 or >= min";
when the LP bound certifies that point within the relative gap it is the answer, otherwise the
MILP is solved from it (docs/optimizer.md explains why: HiGHS's own incumbent search was the
slow part, not the bound).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from nowblock.milp.formulation import Formulation, MatrixForm


_TOL_A = 1e-6


class SolverOptionError(ValueError):
    """HiGHS refused an option (unknown name or bad value)."""


@dataclass(frozen=True, eq=False)
class SolveResult:
    """What a backend returns: ``status`` is one of

    - ``"optimal"``: solved to the requested gap,
    - ``"time_limit"``: stopped by a limit with a feasible incumbent (kept),
    - ``"no_solution"``: stopped by a limit before any feasible point,
    - ``"failed"``: infeasible, unbounded or a solver error (should not happen: the model is
      always feasible, all-zero is a solution).

    ``values`` holds every column (None without a solution); ``objective`` and ``bound`` [EUR]
    are the incumbent and the best proven bound; ``solve_seconds`` is the solver's own run time
    and ``build_seconds`` the time spent building the matrix and passing it;
    ``run_call_seconds`` is the wall time of HiGHS's ``run()`` calls (its own clock misses a
    part of each call: model checks before, solution bookkeeping after, ~0.1 ms plus ~0.07 ms
    per 1,000 columns, measured).
    """

    status: str
    solver_status: str
    values: np.ndarray | None
    objective: float
    bound: float
    mip_gap: float
    solve_seconds: float
    build_seconds: float
    matrix: MatrixForm
    backend: str = "highs"
    run_call_seconds: float = 0.0


def highs_options(form: Formulation) -> dict:
    """HiGHS options for a formulation's settings (time limit, gap, threads, quiet)."""
    o = form.options
    # Feasibility jump spends seconds before the root LP on these models and never wins: the
    # root LP solution rounded is already within the gap (measured, docs/bench_optimize.md).
    opts = {"output_flag": False, "time_limit": float(o.time_limit_s), "mip_rel_gap": float(o.mip_rel_gap),
            "random_seed": 0, "mip_heuristic_run_feasibility_jump": False}
    if o.threads is not None:
        opts["threads"] = int(o.threads)
    opts.update(o.solver_options)
    return opts


def _set_options(h, opts: dict) -> None:
    import highspy

    for k, v in opts.items():
        if h.setOptionValue(k, v) != highspy.HighsStatus.kOk:
            raise SolverOptionError(f"HiGHS option {k}={v!r} was refused")


def classify(model_status, has_solution: bool) -> str:
    """Map a HiGHS model status to the schedule status vocabulary (see :class:`SolveResult`)."""
    import highspy

    ms = highspy.HighsModelStatus
    if model_status == ms.kOptimal:
        return "optimal"
    if model_status in (ms.kTimeLimit, ms.kIterationLimit, ms.kInterrupt, ms.kSolutionLimit,
                        ms.kObjectiveBound, ms.kObjectiveTarget, ms.kMemoryLimit, ms.kHighsInterrupt):
        return "time_limit" if has_solution else "no_solution"
    return "failed"


def solve_highs(form: Formulation, *, relax: bool = False, warm_start_a=None) -> SolveResult:
    """Solve the formulation with HiGHS directly.

    ``relax=True`` solves the LP relaxation (no binaries). Otherwise the LP relaxation is solved
    first and its solution repaired to "0 or >= min" (:func:`repair_stray`); if that point is
    within ``mip_rel_gap`` of the LP bound it is returned (the LP bound certifies the gap), else
    the MILP is solved with the better of it and the shifted previous plan ``warm_start_a``
    (dense (n, T) [A], or a function returning it or None, called only if the MILP runs) as the
    starting incumbent. ``bound`` is the best proven lower bound.
    """
    limit = form.options.time_limit_s
    if relax:
        return _solve_once(form, form.matrix(relax=True), None, limit)
    t0 = time.perf_counter()
    if not form.binary_candidates.any():
        return _solve_once(form, form.matrix(), None, limit)
    lp = _solve_once(form, form.matrix(relax=True), None, limit)
    points = []  # repaired cell currents: from the LP solution, then from the previous plan
    if lp.values is not None:
        x = repair_stray(form, lp.values[lp.matrix.cols["current_a"]])
        # The LP's own matrix suffices to price and check the point: "0 or >= min" holds by
        # construction, so a point feasible there is feasible for the MILP.
        v = complete_solution(form, lp.matrix, x)
        if is_feasible(lp.matrix, v):
            points.append(x)
            obj = float(lp.matrix.cost @ v)
            gap = (obj - lp.objective) / max(abs(obj), 1e-9)
            if gap <= form.options.mip_rel_gap:
                return SolveResult(status="optimal", solver_status=f"LP bound certifies the repaired LP point ({lp.solver_status})",
                                   values=v, objective=obj, bound=lp.objective, mip_gap=max(gap, 0.0),
                                   solve_seconds=lp.solve_seconds,
                                   build_seconds=time.perf_counter() - t0 - lp.solve_seconds, matrix=lp.matrix,
                                   run_call_seconds=lp.run_call_seconds)
    mf = form.matrix()
    if callable(warm_start_a):
        warm_start_a = warm_start_a()
    if warm_start_a is not None:
        car, slot = form.cells
        points.append(repair_stray(form, warm_start_a[car, slot]))
    starts = [v for v in (complete_solution(form, mf, x) for x in points) if is_feasible(mf, v)]
    start = min(starts, key=lambda c: float(mf.cost @ c)) if starts else None
    spent = time.perf_counter() - t0
    res = _solve_once(form, mf, start, max(limit - spent, 0.05))
    bound = max(res.bound, lp.objective) if np.isfinite(lp.objective) else res.bound
    gap = (res.objective - bound) / max(abs(res.objective), 1e-9) if res.values is not None else float("inf")
    return dataclasses.replace(res, bound=bound, mip_gap=max(gap, 0.0), solve_seconds=res.solve_seconds + lp.solve_seconds,
                               build_seconds=time.perf_counter() - t0 - res.solve_seconds - lp.solve_seconds,
                               run_call_seconds=res.run_call_seconds + lp.run_call_seconds)


def repair_stray(form: Formulation, x: np.ndarray) -> np.ndarray:
    """Cell currents [A] with "0 or >= min" on every binary cell: a current strictly between 0 and
    the minimum becomes the minimum where every limit row keeps room (largest first), else 0.

    Zeroing a stray can overload a row where it had a negative coefficient (an unbalance row)
    when raising it back does not fit: callers check the result (:func:`is_feasible`)."""
    from nowblock.milp.kernels import repair_stray_cells
    from nowblock.milp.schedule import _limit_gh

    car, slot = form.cells
    x = np.minimum(np.maximum(np.asarray(x, dtype=float), 0.0), form.cell_upper_a)
    g, h = _limit_gh(form)
    repair_stray_cells(x, form.min_current_a[car], form.binary_candidates, car, slot, g, h, _TOL_A)
    return x


def complete_solution(form: Formulation, mf: MatrixForm, x: np.ndarray) -> np.ndarray:
    """Every column's value for cell currents ``x`` [A]: on/off, shortfall, worst fraction, peak,
    changes, each at its cheapest feasible value."""
    from nowblock.milp.kernels import complete_columns

    car, slot = form.cells
    cols = mf.cols
    wf, pk = cols["worst_fraction"], cols["peak_kw"]
    return complete_columns(mf.num_col, np.asarray(x, dtype=float), car, slot, form.cell_energy_per_a_kwh,
                            form.kw_per_a[car], np.maximum(form.need_kwh, 0.0), np.asarray(form.base_kw, dtype=float),
                            mf.binary_cell, cols["shortfall_kwh"].start, wf.start if wf.stop > wf.start else -1,
                            pk.start if pk.stop > pk.start else -1, mf.change_cell, mf.change_has_prev,
                            mf.change_rhs, cols["change_up_a"].start, cols["change_down_a"].start, _TOL_A)


def is_feasible(mf: MatrixForm, v: np.ndarray, tol: float = 1e-6) -> bool:
    """Whether column values ``v`` satisfy every bound and row of ``mf`` (within ``tol``)."""
    from nowblock.milp.kernels import csc_feasible

    return bool(csc_feasible(mf.a_start, mf.a_index, mf.a_value, np.asarray(v, dtype=float), mf.col_lo, mf.col_hi,
                             mf.row_lo, mf.row_hi, float(tol)))


_BANNER_SILENCED = False


def _new_highs():
    """A fresh ``highspy.Highs``; the first one in a process is made with stdout muted.

    HiGHS prints its copyright banner on stdout when the first solver object is created,
    before ``output_flag`` can be set; that would corrupt a CLI's table output.
    """
    import highspy

    global _BANNER_SILENCED
    if _BANNER_SILENCED:
        return highspy._Highs()
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy._Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    _BANNER_SILENCED = True
    return h


def _solve_once(form: Formulation, mf: MatrixForm, start: np.ndarray | None, time_limit_s: float) -> SolveResult:
    import highspy

    t0 = time.perf_counter()
    # A fresh object per solve: HiGHS's time limit counts the object's run clock since it was
    # made, and no clear* call resets it (measured: a reused object's fourth 9 ms solve under a
    # 20 ms limit stopped at once), so a reused one would run out of time after enough solves.
    h = _new_highs()
    opts = highs_options(form)
    opts["time_limit"] = float(max(time_limit_s, 1e-3))
    _set_options(h, opts)
    st = h.passModel(mf.num_col, mf.num_row, mf.num_nz, int(highspy.MatrixFormat.kColwise),
                     int(highspy.ObjSense.kMinimize), 0.0, mf.cost, mf.col_lo, mf.col_hi, mf.row_lo,
                     mf.row_hi, mf.a_start, mf.a_index, mf.a_value, mf.integrality)
    if st == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the model (passModel returned an error)")
    is_mip = len(mf.binary_cell) > 0  # the only integer columns (``_build_matrix``)
    if start is not None and is_mip:
        h.setSolution(mf.num_col, np.arange(mf.num_col, dtype=np.int32), np.asarray(start, dtype=float))
    build_s = time.perf_counter() - t0 + mf.build_seconds
    t_run = time.perf_counter()
    run_status = h.run()
    run_call_s = time.perf_counter() - t_run
    solve_s = h.getRunTime()
    model_status = h.getModelStatus()
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    status = classify(model_status, has_sol) if run_status != highspy.HighsStatus.kError or has_sol else "failed"
    if has_sol:
        col_value = h.getSolution().col_value  # a Python list: fromiter is the quickest copy
        values = np.fromiter(col_value, dtype=float, count=len(col_value))
    else:
        values = None
    obj = float(info.objective_function_value) if has_sol else float("nan")
    if is_mip:
        bound, gap = float(info.mip_dual_bound), float(info.mip_gap) if has_sol else float("inf")
    else:
        bound, gap = obj, 0.0
    return SolveResult(status=status, solver_status=h.modelStatusToString(model_status), values=values,
                       objective=obj, bound=bound, mip_gap=gap, solve_seconds=float(solve_s), build_seconds=build_s,
                       matrix=mf, run_call_seconds=run_call_s)
