"""The fast path: the formulation's standard form passed to HiGHS in one call (highspy).

No per-element Python work: the matrix is built from whole arrays (:meth:`Formulation.matrix`)
and handed over as CSC arrays with ``Highs.passModel``. Every option is set with its status
checked, the model status is read explicitly, and the incumbent is kept when the time limit
stops the search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nowblock.optimize.formulation import Formulation, MatrixForm


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
    and ``build_seconds`` the time spent building the matrix and passing it.
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


def solve_highs(form: Formulation, *, relax: bool = False, warm_start_a: np.ndarray | None = None) -> SolveResult:
    """Solve the formulation with HiGHS directly.

    ``relax=True`` solves the LP relaxation (no binaries). ``warm_start_a`` is a dense (n, T)
    plan [A] (the previous plan shifted); it is offered to HiGHS as a partial solution
    (currents and on/off), which HiGHS completes and keeps as an incumbent if it is feasible.
    """
    return _solve_once(form, form.matrix(relax=relax), warm_start_a, form.options.time_limit_s)


def _solve_once(form: Formulation, mf: MatrixForm, warm_start_a: np.ndarray | None, time_limit_s: float) -> SolveResult:
    import highspy

    t0 = time.perf_counter()
    h = highspy.Highs()
    opts = highs_options(form)
    opts["time_limit"] = float(max(time_limit_s, 1e-3))
    _set_options(h, opts)
    st = h.passModel(mf.num_col, mf.num_row, mf.num_nz, int(highspy.MatrixFormat.kColwise),
                     int(highspy.ObjSense.kMinimize), 0.0, mf.cost, mf.col_lo, mf.col_hi, mf.row_lo,
                     mf.row_hi, mf.a_start, mf.a_index, mf.a_value, mf.integrality)
    if st == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the model (passModel returned an error)")
    if warm_start_a is not None and mf.integrality.any():
        idx, val = _warm_start(form, mf, warm_start_a)
        h.setSolution(len(idx), idx, val)
    build_s = time.perf_counter() - t0 + mf.build_seconds
    run_status = h.run()
    solve_s = h.getRunTime()
    model_status = h.getModelStatus()
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    status = classify(model_status, has_sol) if run_status != highspy.HighsStatus.kError or has_sol else "failed"
    values = np.asarray(h.getSolution().col_value, dtype=float) if has_sol else None
    obj = float(info.objective_function_value) if has_sol else float("nan")
    if mf.integrality.any():
        bound, gap = float(info.mip_dual_bound), float(info.mip_gap) if has_sol else float("inf")
    else:
        bound, gap = obj, 0.0
    return SolveResult(status=status, solver_status=h.modelStatusToString(model_status), values=values,
                       objective=obj, bound=bound, mip_gap=gap, solve_seconds=float(solve_s), build_seconds=build_s,
                       matrix=mf)


def _warm_start(form: Formulation, mf: MatrixForm, plan_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partial solution (column index, value) from a dense (n, T) plan: currents and on/off."""
    car, slot = form.cells
    x = np.clip(plan_a[car, slot], 0.0, form.upper_a[car, slot])
    on = x >= form.min_current_a[car] - 1e-6
    x = np.where(on, x, 0.0)
    xs, ons = mf.cols["current_a"], mf.cols["on"]
    idx = np.concatenate([np.arange(xs.start, xs.stop), np.arange(ons.start, ons.stop)])
    val = np.concatenate([x, on[mf.binary_cell].astype(float)])
    return idx.astype(np.int32), val
