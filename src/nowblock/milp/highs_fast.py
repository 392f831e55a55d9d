"""The fast path: the formulation's standard form passed to HiGHS in one call (highspy).

No per-element Python work: the matrix is built from whole arrays
(:func:`nowblock.milp.matrix.build_matrix`) and handed over as CSC arrays with
``passModel``. Every option is set with its status checked, the model status is read
explicitly, and the incumbent is kept when the time limit stops the search.
:func:`solve_matrix` is one HiGHS solve of a built matrix (the LP stage and the MILP stage of
:func:`nowblock.milp.solve.solve_formulation` each call it once); :func:`solve_highs` solves a
formulation's LP relaxation or its MILP directly.

HiGHS prints a banner when the first solver object is made, but only through the Python
``highspy.Highs`` class (its callbacks); :func:`new_solver` makes the core object
``highspy._Highs`` and switches its output off before any call that could log, so nothing
reaches stdout (checked in a fresh process by ``tests/test_milp_solve.py``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from nowblock.milp.formulation import Formulation
from nowblock.milp.matrix import MatrixForm, is_feasible, plan_columns


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
    row_dual: np.ndarray | None = None  # an LP's row duals (HiGHS's sign: <= 0 on binding upper rows)
    basis: object | None = None  # an LP's final simplex basis (highspy.HighsBasis), when asked for


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
    """Solve the formulation's LP relaxation (``relax=True``) or its MILP (binaries as
    ``options.binary_slots`` says) with HiGHS directly, in one solve within
    ``options.time_limit_s``: no rounding, no LP stage. ``warm_start_a`` (dense (n, T) [A], or a
    function returning it or None) is offered to a MILP as a first incumbent after
    :func:`nowblock.milp.rounding.make_plan` has made it a real plan."""
    mf = form.matrix(relax=relax)
    start = None
    if callable(warm_start_a):
        warm_start_a = warm_start_a()
    if warm_start_a is not None and not relax:
        from nowblock.milp.rounding import make_plan

        car, slot = form.cells
        v = plan_columns(form, mf, make_plan(form, warm_start_a, front_load=False).current_a[car, slot])
        start = v if is_feasible(mf, v) else None
    return solve_matrix(form, mf, form.options.time_limit_s, start)


def new_solver(options: dict):
    """A fresh HiGHS object, quiet, with ``options`` set (each status checked).

    A fresh object per solve: HiGHS's time limit counts the object's run clock since it was
    made, and no clear* call resets it (measured: a reused object's fourth 9 ms solve under a
    20 ms limit stopped at once), so a reused one would run out of time after enough solves.
    """
    import highspy

    h = highspy._Highs()
    _set_options(h, {"output_flag": False, **options})
    return h


def check_finite(mf: MatrixForm) -> None:
    """Refuse a matrix HiGHS cannot solve: NaN anywhere, or an infinite cost or coefficient
    (infinite bounds are allowed: they mean "no bound").

    Parameters
    ----------
    mf : MatrixForm
        Costs [EUR per column unit], column and row bounds, coefficients.

    Raises
    ------
    ValueError
        Naming the first family of numbers at fault and how many entries.

    Notes
    -----
    Called on every solve (thousands in a simulated week), so whole-array numpy reductions
    only: 10-20 us at 50 cars x 96 slots (2,400 columns, 10,000 coefficients; an LP of it took
    4-15 ms), 0.15-0.35 ms at 1,000 cars x 288 slots (800,000 coefficients; 0.55-0.66 s), measured.
    """
    for name, values, finite in (("cost", mf.cost, True), ("a_value", mf.a_value, True),
                                 ("col_lo", mf.col_lo, False), ("col_hi", mf.col_hi, False),
                                 ("row_lo", mf.row_lo, False), ("row_hi", mf.row_hi, False)):
        ok = np.isfinite(values).all() if finite else not np.isnan(values).any()
        if not ok:
            bad = ~np.isfinite(values) if finite else np.isnan(values)
            what = "NaN or infinite" if finite else "NaN"
            raise ValueError(f"the model has {int(bad.sum())} {what} {name} entries (first at {int(np.argmax(bad))}): "
                             f"check the prices, base load and needs it was built from")


def solve_matrix(form: Formulation, mf: MatrixForm, time_limit_s: float, start: np.ndarray | None = None, *,
                 basis=None, keep_basis: bool = False, interrupt=None, options: dict | None = None) -> SolveResult:
    """One HiGHS solve of ``mf`` (built from ``form``) within ``time_limit_s`` [s]; ``start``
    (every column's value) is offered as the first incumbent of a MILP; an LP starts from
    ``basis`` (a ``highspy.HighsBasis`` of ``mf``'s shape, e.g. :func:`extend_basis`) and, with
    ``keep_basis``, returns its final basis in :attr:`SolveResult.basis`. ``interrupt`` (a
    ``threading.Event``) stops an LP's simplex or interior-point iterations once set (status
    ``"no_solution"``, see :func:`race_lp`); ``options`` are HiGHS options set after the
    formulation's.

    Raises
    ------
    ValueError
        A NaN in the costs, bounds or coefficients, or an infinite cost or coefficient
        (:func:`check_finite`): HiGHS does not refuse every such model, and with NaN costs its
        simplex ran forever, past its own time limit.
    """
    import highspy

    check_finite(mf)
    t0 = time.perf_counter()
    is_mip = bool(mf.integrality.any())
    opts = highs_options(form)
    opts["time_limit"] = float(max(time_limit_s, 1e-3))
    if not is_mip and "presolve" not in form.options.solver_options:
        # The matrix states only rows that can bind; HiGHS's LP presolve found little else and
        # cost 25-45 % of the LP's time on the instance matrix (docs/bench_optimize.md).
        opts["presolve"] = "off"
    opts.update(options or {})
    h = new_solver(opts)
    if interrupt is not None:
        def _stop(callback_type, message, data_out, data_in, user_data):
            if interrupt.is_set():
                data_in.user_interrupt = True

        h.setCallback(_stop, None)
        h.startCallback(highspy.cb.HighsCallbackType.kCallbackSimplexInterrupt)
        h.startCallback(highspy.cb.HighsCallbackType.kCallbackIpmInterrupt)
    st = h.passModel(mf.num_col, mf.num_row, mf.num_nz, int(highspy.MatrixFormat.kColwise),
                     int(highspy.ObjSense.kMinimize), 0.0, mf.cost, mf.col_lo, mf.col_hi, mf.row_lo,
                     mf.row_hi, mf.a_start, mf.a_index, mf.a_value, mf.integrality)
    if st == highspy.HighsStatus.kError:
        raise RuntimeError("HiGHS rejected the model (passModel returned an error)")
    if start is not None and is_mip:
        h.setSolution(mf.num_col, np.arange(mf.num_col, dtype=np.int32), np.asarray(start, dtype=float))
    if basis is not None and not is_mip and h.setBasis(basis) == highspy.HighsStatus.kError:
        basis = None  # HiGHS refused it: it starts from its own (the same LP, only slower)
    build_s = time.perf_counter() - t0 + mf.build_seconds
    t_run = time.perf_counter()
    run_status = h.run()
    run_call_s = time.perf_counter() - t_run
    solve_s = h.getRunTime()
    model_status = h.getModelStatus()
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    status = classify(model_status, has_sol) if run_status != highspy.HighsStatus.kError or has_sol else "failed"
    row_dual = None
    out_basis = h.getBasis() if keep_basis and not is_mip and status == "optimal" else None
    if has_sol:
        sol = h.getSolution()
        col_value = sol.col_value  # a Python list: fromiter is the quickest copy
        values = np.fromiter(col_value, dtype=float, count=len(col_value))
        if not is_mip and sol.dual_valid:
            row_dual = np.fromiter(sol.row_dual, dtype=float, count=mf.num_row)
    else:
        values = None
    obj = float(info.objective_function_value) if has_sol else float("nan")
    if has_sol and is_mip:
        # The objective of the columns returned, which are the plan: HiGHS 1.16 with presolve and
        # a start (setSolution) reported an improved objective, 1604.76 EUR, with the start's own
        # columns, 1622.15 (the MILP stage's neighbourhood solve, an outside test's 6-car block);
        # without presolve it returned the improved columns, so the solve is run again so.
        cost = float(mf.cost @ values)
        left = time_limit_s - (time.perf_counter() - t0)
        if (start is not None and cost > obj + 1e-6 * max(1.0, abs(obj)) and opts.get("presolve") != "off"
                and left > 0.01):
            again = solve_matrix(form, mf, left, start, options={**(options or {}), "presolve": "off"})
            return dataclasses.replace(again, solve_seconds=again.solve_seconds + float(solve_s),
                                       build_seconds=again.build_seconds + build_s - mf.build_seconds,
                                       run_call_seconds=again.run_call_seconds + run_call_s)
        obj = cost
    if is_mip:
        bound, gap = float(info.mip_dual_bound), float(info.mip_gap) if has_sol else float("inf")
    else:  # an LP's objective bounds the MILP only when the LP is solved
        bound, gap = (obj, 0.0) if status == "optimal" else (float("nan"), float("inf"))
    # A bound on every real plan, not only on the model's points (the LP without overshoot on
    # the light side of unbalance rows: MatrixForm.bound_slack_eur).
    bound -= mf.bound_slack_eur
    return SolveResult(status=status, solver_status=h.modelStatusToString(model_status), values=values,
                       objective=obj, bound=bound, mip_gap=gap, solve_seconds=float(solve_s), build_seconds=build_s,
                       matrix=mf, run_call_seconds=run_call_s, row_dual=row_dual, basis=out_basis)


#: The methods :func:`race_lp` runs side by side: HiGHS's dual simplex (its default for LPs) and
#: its interior-point method with crossover (a basic solution and row duals, as the simplex).
RACE_SOLVERS = ("simplex", "ipm")
#: The share of :func:`race_lp`'s time limit the simplex runs alone before the interior-point
#: method joins it. Why not at once: where the process's CPU time is capped as a whole (a busy
#: shared machine, a container's CPU quota, the kernel's autogroup), the second thread does not
#: add a core but halves the first's: the coarse LP of 1000-15%-tree-5min-load-unb took 5.4-7.4 s
#: with the simplex alone and 14.6-14.9 s raced, at load 12 on 2 cores, 17-20 s even with no
#: interrupt callbacks (docs/benchmarks.md, session 37). The simplex won on 40 of the 45 large
#: coarse LPs measured; the interior point won by much only where the simplex took 11-45 s.
RACE_DELAY_SHARE = 0.15
#: ... but at most this long [s]: the limit passed is the call's time left, so without a cap a
#: long call held the interior point back long where it won by much (2000-15%-tree-5min-unb's
#: coarse LP, interior point 14.2 s alone, simplex 27.6 s: at a 60 s limit 25-30 s raced at once
#: against 39-42 s with a 9 s delay, and the call's polish did not fit; tests/test_milp_race.py).
#: Up to a 33 s limit the share is kept (at 30 s its 4.5 s delay measured 23.0 s against 27.8 s
#: at once; docs/benchmarks.md, session 37).
RACE_DELAY_MAX_S = 5.0


def race_lp(form: Formulation, mf: MatrixForm, time_limit_s: float, delay_s: float | None = None) -> SolveResult:
    """The LP ``mf`` solved by HiGHS's simplex and, if that has not ended after ``delay_s`` [s]
    (default :data:`RACE_DELAY_SHARE` of ``time_limit_s`` [s], at most :data:`RACE_DELAY_MAX_S`),
    its interior-point method beside it in a second thread (HiGHS releases the GIL while it
    runs): the first optimal answer is kept and the other method stopped (its iterations
    interrupted). The interior point starts at once if the simplex ends before the delay without
    an optimum (an error), and never if it ends optimal. Why race: on large coarse LPs of the instance matrix neither method was always the
    faster one: the interior-point method took 3-5 x less than the simplex on the unbalance
    trees with 2,000 cars (37.6 -> 12.9 s, 44.9 -> 9.3 s, where the simplex did not finish in
    time) and 4.8 x more at the median of 45 others (docs/bench_optimize.md, sessions 28-29);
    which wins is not known before. Costs a second core while both run.

    Parameters
    ----------
    form : Formulation
        The model's options (a ``solver`` the user chose is used alone, not raced).
    mf : MatrixForm
        The LP (a model with integer columns is solved once, not raced).
    time_limit_s : float
        Both methods end by then [s] from the call.
    delay_s : float, optional
        How long [s] the simplex runs alone; default :data:`RACE_DELAY_SHARE` of ``time_limit_s``,
        at most :data:`RACE_DELAY_MAX_S`.

    Returns
    -------
    SolveResult
        The first optimal answer; if neither is optimal within the limit, the simplex's result
        (the one a single solve would have given).
    """
    import threading

    if "solver" in form.options.solver_options or bool(mf.integrality.any()):
        return solve_matrix(form, mf, time_limit_s)
    t0 = time.perf_counter()
    delay = (min(RACE_DELAY_SHARE * time_limit_s, RACE_DELAY_MAX_S) if delay_s is None
             else max(float(delay_s), 0.0))
    stop, done, first_ended = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, SolveResult | BaseException | None] = {}
    lock = threading.Lock()

    def finish(solver: str, res: SolveResult | BaseException | None) -> None:
        with lock:
            results[solver] = res
            if (isinstance(res, SolveResult) and res.status == "optimal") or len(results) == len(RACE_SOLVERS):
                done.set()

    def one(solver: str, wait_s: float) -> None:
        if wait_s > 0:
            first_ended.wait(wait_s)
            if stop.is_set() or done.is_set():
                finish(solver, None)  # the simplex was optimal in time: this method never ran
                return
        try:
            left = time_limit_s - (time.perf_counter() - t0)
            res = solve_matrix(form, mf, max(left, 1e-3), interrupt=stop, options={"solver": solver})
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            res = exc
        finish(solver, res)
        if solver == RACE_SOLVERS[0]:
            first_ended.set()

    threads = [threading.Thread(target=one, args=(s, 0.0 if i == 0 else delay), daemon=True)
               for i, s in enumerate(RACE_SOLVERS)]
    for t in threads:
        t.start()
    done.wait()
    stop.set()
    first_ended.set()
    for t in threads:
        t.join()
    for solver in RACE_SOLVERS:
        res = results.get(solver)
        if isinstance(res, SolveResult) and res.status == "optimal":
            return res
    res = results[RACE_SOLVERS[0]]
    if isinstance(res, BaseException):
        raise res
    return res


def extend_basis(basis, source: MatrixForm, target: MatrixForm):
    """An optimal basis of the LP ``source`` as a starting basis of ``target``, the same model
    with column or row families added (the peak column and rows): every family both share keeps
    its statuses, an added column starts nonbasic at its lower bound (0) and an added row basic
    (its slack). Optimal for ``source``, this basis is dual feasible for ``target`` whenever the
    added column's cost is non-negative, so HiGHS's dual simplex only repairs the added rows
    (0.03 s against 1.4 s from scratch at 200 cars x 288 slots with a base load, measured,
    docs/bench_optimize.md). None if the families do not match."""
    import highspy

    if basis is None or not basis.valid:
        return None
    status = highspy.HighsBasisStatus
    col_in = np.array(basis.col_status, dtype=object)
    row_in = np.array(basis.row_status, dtype=object)
    if len(col_in) != source.num_col or len(row_in) != source.num_row:
        return None
    col = np.full(target.num_col, status.kLower, dtype=object)
    row = np.full(target.num_row, status.kBasic, dtype=object)
    for out, src_blocks, dst_blocks, fill in ((col, source.cols, target.cols, col_in),
                                              (row, source.rows, target.rows, row_in)):
        for name, dst in dst_blocks.items():
            src = src_blocks.get(name)
            size = dst.stop - dst.start
            if src is not None and src.stop - src.start == size:
                out[dst] = fill[src]
            elif src is not None and src.stop - src.start > 0:
                return None  # a family of another size: not the same model
    new = highspy.HighsBasis()
    new.col_status = list(col)
    new.row_status = list(row)
    new.valid = True
    return new
