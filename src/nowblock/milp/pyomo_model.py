"""The same formulation as a Pyomo model, to extend and embed, solved through Pyomo's HiGHS.

:func:`build_block` turns the formulation's standard form (:meth:`Formulation.matrix`, the very
arrays the fast path passes to HiGHS) into a Pyomo ``Block`` with named components:

- variables ``current_a[k]`` (cell k = (car, slot), see ``cell_car``/``cell_slot``), ``on[b]``,
  ``shortfall_kwh[i]``, ``worst_fraction`` (max-min fair only), ``peak_kw``, ``change_up_a[p]``,
  ``change_down_a[p]``, ``useful_a[j]`` (the current the car of cell ``useful_cell[j]`` really
  draws, at most its need in energy: the light side of an unbalance row counts only it),
  ``later_kwh[i]`` (when a car leaves after the horizon's end: the part of its need it could
  still get after it, short first, ``Formulation.due_kwh``);
- constraint families ``energy``, ``fuse`` (labels in ``fuse_row_label``: fuse-phase row, slot),
  ``unbalance``, ``on_upper``, ``on_lower``, ``fair``, ``peak``, ``change``, ``useful_upper``
  (useful <= current), ``useful_energy`` (a car's useful energy <= its need);
- expressions ``charge_power_kw[t]`` (the block's charging power in slot t [kW]) and
  ``cost_eur`` (the formulation's objective [EUR]).

The block carries no objective, so it can sit inside a larger model (a battery, a heat pump)
whose own objective adds ``block.cost_eur``. :func:`build_model` wraps it in a
``ConcreteModel`` (``model.ev``) with ``model.objective = minimise ev.cost_eur``; users may
deactivate a family (``model.ev.fuse.deactivate()``) and add their own rows.

Rows are built from whole CSR arrays (one ``LinearExpression`` per row from array slices), never
by looking values up cell by cell.
"""

from __future__ import annotations

import time

import numpy as np
import pyomo.environ as pyo
from pyomo.core.expr.numeric_expr import LinearExpression

from nowblock.milp.formulation import Formulation
from nowblock.milp.highs_fast import SolveResult

_FAMILIES_VARS = ("current_a", "on", "shortfall_kwh", "worst_fraction", "peak_kw", "change_up_a", "change_down_a",
                  "useful_a", "later_kwh")


def build_block(form: Formulation, *, relax: bool = False, block: pyo.Block | None = None) -> pyo.Block:
    """A Pyomo ``Block`` holding the formulation (variables, constraint families, expressions)."""
    mf = form.matrix(relax=relax)
    b = block if block is not None else pyo.Block(concrete=True)
    col_var: list = [None] * mf.num_col
    for name in _FAMILIES_VARS:
        sl = mf.cols.get(name, slice(0, 0))  # later_kwh only when a car leaves after the horizon
        size = sl.stop - sl.start
        if size == 0:
            continue
        lo, hi, integ = mf.col_lo[sl], mf.col_hi[sl], mf.integrality[sl]
        domain = pyo.Binary if integ.any() else pyo.NonNegativeReals
        bounds = {i: (float(lo[i]), None if not np.isfinite(hi[i]) else float(hi[i])) for i in range(size)}
        var = pyo.Var(range(size), domain=domain, bounds=lambda m, i, _b=bounds: _b[i], dense=True)
        b.add_component(name, var)
        for i in range(size):
            col_var[sl.start + i] = var[i]

    start, col, val = mf.csr()
    for name, sl in mf.rows.items():
        n_rows = sl.stop - sl.start
        if n_rows == 0:
            continue

        def rule(m, r, _off=sl.start):
            a, z = start[_off + r], start[_off + r + 1]
            expr = LinearExpression(constant=0.0, linear_coefs=[float(v) for v in val[a:z]],
                                    linear_vars=[col_var[c] for c in col[a:z]])
            lo_, hi_ = mf.row_lo[_off + r], mf.row_hi[_off + r]
            if lo_ == hi_:
                return expr == float(lo_)
            return (None if not np.isfinite(lo_) else float(lo_), expr, None if not np.isfinite(hi_) else float(hi_))

        b.add_component(name, pyo.Constraint(range(n_rows), rule=rule))

    car, slot = form.cells
    b.cell_car, b.cell_slot = car, slot
    b.session_ids = form.session_ids
    b.fuse_row_label = mf.fuse_row_label
    b.unbalance_row_label = mf.unbalance_row_label
    b.useful_cell = mf.useful_cell
    b.matrix_form = mf
    b.col_var = col_var
    xs = mf.cols["current_a"]
    kw = form.kw_per_a[car]
    by_slot = np.argsort(slot, kind="stable")
    bounds_t = np.searchsorted(slot[by_slot], np.arange(form.n_slots + 1))

    def power_rule(m, t):
        ks = by_slot[bounds_t[t]:bounds_t[t + 1]]
        return LinearExpression(constant=0.0, linear_coefs=[float(c) for c in kw[ks]],
                                linear_vars=[col_var[xs.start + k] for k in ks])

    b.charge_power_kw = pyo.Expression(range(form.n_slots), rule=power_rule)
    nz = np.nonzero(mf.cost)[0]
    b.cost_eur = pyo.Expression(expr=LinearExpression(constant=0.0, linear_coefs=[float(c) for c in mf.cost[nz]],
                                                      linear_vars=[col_var[c] for c in nz]))
    return b


def build_model(form: Formulation, *, relax: bool = False) -> pyo.ConcreteModel:
    """A ``ConcreteModel`` with the formulation as block ``ev`` and ``objective`` = min ``ev.cost_eur``."""
    m = pyo.ConcreteModel(name="nowblock")
    m.ev = build_block(form, relax=relax)
    m.objective = pyo.Objective(expr=m.ev.cost_eur, sense=pyo.minimize)
    return m


#: The contract name for users: the Pyomo model of a formulation.
build_pyomo_model = build_model


def solve_model(model: pyo.ConcreteModel, *, time_limit_s: float = 30.0, mip_rel_gap: float = 0.01,
                threads: int | None = None, solver_options: dict | None = None):
    """Solve any (extended) model with Pyomo's HiGHS interface; returns Pyomo's results object.

    Solutions are loaded only when one exists; never raises on a non-optimal termination.
    """
    from pyomo.contrib.solver.common.factory import SolverFactory

    opt = SolverFactory("highs")
    if not opt.available():
        raise RuntimeError("Pyomo's 'highs' solver interface is not available (is highspy installed?)")
    opts = {"mip_heuristic_run_feasibility_jump": False, "random_seed": 0}
    opts.update(solver_options or {})
    res = opt.solve(model, time_limit=float(time_limit_s), rel_gap=float(mip_rel_gap), threads=threads,
                    load_solutions=False, raise_exception_on_nonoptimal_result=False, solver_options=opts)
    from pyomo.contrib.solver.common.results import SolutionStatus

    if res.solution_status in (SolutionStatus.optimal, SolutionStatus.feasible):
        res.solution_loader.load_vars()
    return res


def solve_pyomo(form: Formulation, *, relax: bool = False) -> SolveResult:
    """Build the Pyomo model of ``form`` and solve it with HiGHS; same result type as the fast path."""
    from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition

    t0 = time.perf_counter()
    m = build_model(form, relax=relax)
    build_s = time.perf_counter() - t0
    o = form.options
    t1 = time.perf_counter()
    res = solve_model(m, time_limit_s=o.time_limit_s, mip_rel_gap=o.mip_rel_gap, threads=o.threads,
                      solver_options=o.solver_options)
    solve_s = time.perf_counter() - t1
    has_sol = res.solution_status in (SolutionStatus.optimal, SolutionStatus.feasible)
    tc = res.termination_condition
    if tc == TerminationCondition.convergenceCriteriaSatisfied and has_sol:
        status = "optimal"
    elif tc in (TerminationCondition.maxTimeLimit, TerminationCondition.iterationLimit, TerminationCondition.interrupted):
        status = "time_limit" if has_sol else "no_solution"
    else:
        status = "failed"
    mf = m.ev.matrix_form
    values = np.array([v.value if v.value is not None else 0.0 for v in m.ev.col_var]) if has_sol else None
    obj = float(res.incumbent_objective) if has_sol and res.incumbent_objective is not None else float("nan")
    bound = float(res.objective_bound) - mf.bound_slack_eur if res.objective_bound is not None else float("nan")
    gap = (obj - bound) / max(abs(obj), 1e-9) if has_sol and np.isfinite(bound) else float("inf")
    return SolveResult(status=status, solver_status=str(tc.name), values=values, objective=obj, bound=bound,
                       mip_gap=max(gap, 0.0), solve_seconds=solve_s, build_seconds=build_s, matrix=mf, backend="pyomo")
