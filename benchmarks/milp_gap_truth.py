"""What the optimizer's reported MIP gap is measured against, and how far its plan really is from
the optimum (issue 15, gap target; docs/benchmarks.md, session 39).

For each matrix cell: ``nb.optimize`` as a user calls it (the plan, its objective, the bound it
reports and the stage that bound came from), then the optimizer's *own* model solved as a whole
MILP by HiGHS for ``--limit-s`` seconds at ``mip_rel_gap`` 1e-4: on/off binaries on every cell,
every current in whole pilot steps, the light side of each unbalance row at what a car really
draws (``Formulation.matrix(binary_mask=all, exact_draws=True)`` with
:func:`~nowblock.milp.matrix.in_pilot_steps`, the model the MILP stage solves on small blocks),
started from our plan. Its dual bound is a lower bound on every real plan's objective in the
same units as the plan's (checked: our plan's columns are a feasible point of it, priced at our
objective); its incumbent, made a real plan, is re-priced with
:func:`~nowblock.milp.matrix.plan_objective` and checked outside the optimizer
(:func:`milp_matrix.check_schedule`). Also the LP relaxation of that MILP (the disjunction
"0 or at least the minimum" and the whole steps relaxed) and its root bound.

So: ``ours - best_bound`` splits into ``ours - best_found`` (the incumbent's share) and
``best_found - best_bound`` (what HiGHS could not close either). Usage::

    PYTHONPATH=src python3 benchmarks/milp_gap_truth.py 50-70%-tree-15min-unb --limit-s 300
    PYTHONPATH=src python3 benchmarks/milp_gap_truth.py --list 50          # today's gaps of the 48 cells
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from exact_matrix import parse_cell  # noqa: E402
from milp_matrix import cells as matrix_cells, check_schedule  # noqa: E402


def _optimize(block: dict, step: str, **opts):
    import nowblock as nb

    return nb.optimize(block["site"], block["sessions"], start=block["start"], horizon="24h", step=step,
                       base_load=block["base_load"], prices=block["prices"], **opts)


def whole_milp(form, plan_a: np.ndarray):
    """The optimizer's model of ``form`` as a whole MILP (module docstring) in pilot steps, and
    ``plan_a``'s columns in it (None if that plan is not a point of it)."""
    from nowblock.milp.matrix import in_pilot_steps, is_feasible, plan_columns

    car, slot = form.cells
    K = len(car)
    mf = form.matrix(binary_mask=np.ones(K, dtype=bool), split_useful=True, n_window=form.n_slots,
                     exact_draws=True)
    steps = in_pilot_steps(mf, np.arange(K), float(form.options.current_step_a))
    v = plan_columns(form, mf, np.asarray(plan_a, dtype=float)[car, slot])
    start = None
    if is_feasible(mf, v):
        start = v.copy()
        start[mf.cols["current_a"]] /= steps.current_scale
    return mf, steps, start


def truth(label: str, limit_s: float, rel_gap: float = 1e-4, save: str | None = None) -> dict:
    """Measure one cell (module docstring); returns the figures."""
    from exact_matrix import cell_block
    from nowblock.milp.highs_fast import solve_matrix
    from nowblock.milp.matrix import plan_objective
    from nowblock.milp.plans import as_plan, real_plan

    block, step = cell_block(label)
    t = time.perf_counter()
    s = _optimize(block, step)
    call_s = time.perf_counter() - t
    form = s.form
    stages = s.extra.get("stages", [])
    mf, steps, start = whole_milp(form, s.plan_a)
    mf_lp = form.matrix(relax=True)
    ours = float(plan_objective(form, mf_lp, s.plan_a))
    out = {"cell": label, "call_s": call_s, "status": s.status, "method": s.method, "objective": float(s.objective),
           "objective_repriced": ours, "bound": float(s.bound), "gap": float(s.mip_gap),
           "stages": [{k: v for k, v in st.items() if k in ("stage", "status", "bound", "relaxed_objective")}
                      for st in stages],
           "start_feasible": start is not None,
           "start_objective": float(steps.cost @ start) if start is not None else float("nan"),
           "n_cols": steps.num_col, "n_int": int(steps.integrality.sum()), "n_rows": steps.num_row}
    # the relaxation of the whole MILP (no disjunction, no whole steps)
    relaxed = dataclasses.replace(steps, integrality=np.zeros_like(steps.integrality))
    lp = solve_matrix(form, relaxed, 600.0)
    out["whole_lp_relaxation"] = float(lp.bound)  # solve_matrix subtracts bound_slack_eur
    f2 = form.with_options(time_limit_s=limit_s, mip_rel_gap=rel_gap, mip_abs_gap=0.0)
    t = time.perf_counter()
    res = solve_matrix(f2, steps, limit_s, start)
    out["highs_s"] = time.perf_counter() - t
    out["highs_status"] = res.solver_status
    out["highs_objective"] = float(res.objective)
    out["highs_bound"] = float(res.bound)
    if res.values is not None:
        x = form.current_from_cells(steps.current_a(res.values))
        own = as_plan(form, x)
        if own is not None:
            plan_a, how = own.current_a, "as is"
        else:
            p, _ = real_plan(form, mf_lp, x)
            plan_a, how = p.current_a, "rounded"
        out["highs_plan_objective"] = float(plan_objective(form, mf_lp, plan_a))
        out["highs_plan_how"] = how
        import pandas as pd

        frame = pd.DataFrame(plan_a.T, index=form.times, columns=form.session_ids)
        chk = check_schedule(block, step, frame, step_a=float(form.options.current_step_a))
        chk_ours = check_schedule(block, step, s.current_a, step_a=float(form.options.current_step_a))
        out["highs_plan_ok"] = chk["ok"]
        out["highs_plan_energy_kwh"] = chk["energy_kwh"]
        out["our_energy_kwh"] = chk_ours["energy_kwh"]
        if save:
            Path(save).mkdir(parents=True, exist_ok=True)
            frame.to_csv(Path(save) / f"{label}-highs.csv")
            s.current_a.to_csv(Path(save) / f"{label}-ours.csv")
    best_bound = max(out["highs_bound"], out["bound"]) if np.isfinite(out["highs_bound"]) else out["bound"]
    best_found = min(ours, out.get("highs_plan_objective", np.inf))
    out["best_bound"] = best_bound
    out["gap_ours_vs_best_bound"] = (ours - best_bound) / abs(ours)
    out["gap_ours_vs_best_found"] = (ours - best_found) / abs(ours)
    out["gap_best_found_vs_best_bound"] = (best_found - best_bound) / abs(best_found)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cells", nargs="*", help="matrix cell labels")
    ap.add_argument("--limit-s", type=float, default=300.0)
    ap.add_argument("--list", type=int, metavar="CARS", help="print the reported gap of every full-matrix cell "
                                                                 "with this many cars, worst first")
    ap.add_argument("--json", default=None)
    ap.add_argument("--save", metavar="DIR", help="write each cell's plans (ours, HiGHS's best) as CSV")
    args = ap.parse_args(argv)
    rows = []
    if args.list:
        from nowblock.milp.testing import matrix_block

        for c in matrix_cells(full=True):
            if c.n_cars != args.list:
                continue
            b = matrix_block(c)
            s = _optimize(b, c.step)
            rows.append({"cell": c.label, "gap": float(s.mip_gap), "objective": float(s.objective),
                         "bound": float(s.bound), "method": s.method, "status": s.status})
        rows.sort(key=lambda r: -r["gap"])
        for r in rows:
            print(f"{r['cell']:28s} gap {100 * r['gap']:7.2f} %  obj {r['objective']:10.4f}  bound "
                  f"{r['bound']:10.4f}  {r['status']} {r['method']}", flush=True)
    for label in args.cells:
        parse_cell(label)
        r = truth(label, args.limit_s, save=args.save)
        rows.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
