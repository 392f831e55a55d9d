"""One planning step: formulation -> backend (HiGHS direct or Pyomo) -> rounded :class:`Schedule`.

A block is never left without a safe setpoint: if the backend raises, fails, or finds no
feasible point within its time limit, the schedule comes from the baseline heuristic
(:func:`nowblock.milp.schedule.fallback_schedule`) and says so in ``status``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from nowblock.milp.formulation import Formulation, OptimizeOptions, from_sessions
from nowblock.milp.highs_fast import SolveResult, SolverOptionError, solve_highs
from nowblock.milp.schedule import Schedule, fallback_schedule, to_schedule


def run_backend(form: Formulation, *, relax: bool = False, warm_start_a=None) -> SolveResult:
    """Solve ``form`` with the backend its options name (no fallback, no rounding); ``warm_start_a``
    as in :func:`~nowblock.milp.highs_fast.solve_highs`."""
    if form.options.backend == "pyomo":
        from nowblock.milp.pyomo_model import solve_pyomo

        return solve_pyomo(form, relax=relax)
    return solve_highs(form, relax=relax, warm_start_a=warm_start_a)


def solve_formulation(form: Formulation, *, warm_start_a=None) -> Schedule:
    """Solve one planning step and return a rounded, re-checked schedule (never raises on
    solver trouble: falls back to the baseline heuristic; bad options still raise)."""
    backend = form.options.backend
    if len(form.cells[0]) == 0:
        return to_schedule(form, np.zeros((form.n_cars, form.n_slots)), status="optimal", objective=0.0, bound=0.0,
                           mip_gap=0.0, solve_seconds=0.0, build_seconds=0.0, backend=backend, detail="nothing to plan")
    t0 = time.perf_counter()
    try:
        res = run_backend(form, warm_start_a=warm_start_a)
    except SolverOptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any solver trouble must still leave a safe schedule
        return fallback_schedule(form, reason=f"solver error: {type(exc).__name__}: {exc}",
                                 build_seconds=time.perf_counter() - t0, backend=backend)
    if res.status in ("optimal", "time_limit") and res.values is not None:
        x = form.current_from_cells(res.values[res.matrix.cols["current_a"]])
        return to_schedule(form, x, status=res.status, objective=res.objective, bound=res.bound, mip_gap=res.mip_gap,
                           solve_seconds=res.solve_seconds, build_seconds=res.build_seconds, backend=backend,
                           detail=res.solver_status, extra={"run_call_seconds": res.run_call_seconds})
    return fallback_schedule(form, reason=f"solver {res.status}: {res.solver_status}", solve_seconds=res.solve_seconds,
                             build_seconds=res.build_seconds, backend=backend)


def optimize(site, sessions: pd.DataFrame, start=None, horizon="24h", step="15min", base_load=None, prices=None,
             **options) -> Schedule:
    """Plan every session's current [A] over ``horizon`` in slots of ``step``.

    ``sessions`` is the contract's sessions frame (needs known); ``base_load`` [kW] and
    ``prices`` [EUR/kWh] are optional Series over UTC time. ``options`` are
    :class:`~nowblock.milp.formulation.OptimizeOptions` fields, for example
    ``sharing="fair"``, ``time_limit_s=5``, ``mip_rel_gap=0.01``, ``current_step_a=0.1``,
    ``backend="pyomo"``. Returns a :class:`Schedule` (see its ``status``).
    """
    opts = OptimizeOptions.from_kwargs(**options)
    form = from_sessions(site, sessions, start=start, horizon=horizon, step=step, base_load=base_load,
                         prices=prices, options=opts)
    return solve_formulation(form)
