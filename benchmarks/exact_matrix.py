"""An exact whole-ampere model of a matrix cell: an outside yardstick for the optimizer's plans.

The LP floor of :mod:`milp_matrix` with every current a semi-integer column (0, or a whole
ampere from the charging point's minimum to its maximum) and the energy a car draws as a column
of its own (at most its offer, in total at most its need); the light side of the unbalance rows
counts what is drawn, the heavy side what is offered, as :func:`milp_matrix.check_schedule` does.
Every plan that check accepts is feasible here at its own cost (prices of the energy drawn plus
20 EUR/kWh of shortfall), so HiGHS's dual bound is a lower bound on what any real plan pays, and
its incumbent is a real whole-ampere plan to compare with. Written from the contract like the
rest of :mod:`milp_matrix`; slow (HiGHS needs minutes on 50 cars), hence a script, not a
benchmark::

    PYTHONPATH=src python benchmarks/exact_matrix.py 50-70%-tree-15min-unb --limit-s 60
    PYTHONPATH=src python benchmarks/exact_matrix.py 50-15%-tree-15min-load --limit-s 120 --energy-only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from milp_matrix import (SHORTFALL_EUR_PER_KWH, block_arrays, check_schedule, drawn_kwh, fuse_rows,  # noqa: E402
                         lp_floor, phase_differences)

_SEMI_INTEGER = 3  # HiGHS's HighsVarType: 0 or an integer within [lower, upper]


def exact_model(block: dict, step: str, time_limit_s: float = 60.0, integer: bool = True) -> dict:
    """Solve the exact model (or, ``integer=False``, its LP relaxation) of a cell's block.

    Returns ``status``, ``objective`` [EUR] of the best plan found, ``bound`` [EUR] (HiGHS's dual
    bound; the objective for the LP) and ``seconds``.
    """
    import highspy

    a = block_arrays(block, step)
    n, T = a["plugged"].shape
    car, slot = np.nonzero(a["plugged"] > 0)
    K = len(car)
    e = a["kwh_per_a"][car, slot]
    # columns: offers x [A] (K), drawn energy y [kWh] (K), shortfall s [kWh] (n)
    cost = np.concatenate([np.zeros(K), a["prices"][slot], np.full(n, SHORTFALL_EUR_PER_KWH)])
    col_lo = np.concatenate([a["min_a"][car] if integer else np.zeros(K), np.zeros(K), np.zeros(n)])
    col_hi = np.concatenate([np.floor(a["upper"][car] + 1e-9), np.full(K, np.inf), a["need"]])
    width = 2 * K + n
    blocks, lo, hi = [], [], []
    blocks.append(sp.hstack([sp.diags(-e), sp.identity(K), sp.csr_matrix((K, n))]))  # y <= e x
    lo.append(np.full(K, -np.inf))
    hi.append(np.zeros(K))
    per_car = sp.csr_matrix((np.ones(K), (car, np.arange(K))), shape=(n, K))
    blocks.append(sp.hstack([sp.csr_matrix((n, K)), per_car, sp.identity(n)]))  # drawn + shortfall >= need
    lo.append(a["need"])
    hi.append(np.full(n, np.inf))
    blocks.append(sp.hstack([sp.csr_matrix((n, K)), per_car, sp.csr_matrix((n, n))]))  # drawn <= need
    lo.append(np.full(n, -np.inf))
    hi.append(a["need"])
    fuse, room = fuse_rows(a, car, slot, width)  # fuses: offers
    blocks.append(fuse)
    lo.append(np.full(len(room), -np.inf))
    hi.append(room)
    if a["unbalance_a"] is not None:
        for d in phase_differences(a):
            heavy, light = np.nonzero(d[car] > 0)[0], np.nonzero(d[car] < 0)[0]
            r_ = np.concatenate([slot[heavy], slot[light]])
            c_ = np.concatenate([heavy, K + light])
            v_ = np.concatenate([d[car[heavy]], d[car[light]] / e[light]])
            blocks.append(sp.csr_matrix((v_, (r_, c_)), shape=(T, width)))
            lo.append(np.full(T, -np.inf))
            hi.append(np.full(T, float(a["unbalance_a"])))
    A = sp.vstack(blocks).tocsc()
    kinds = np.zeros(width, dtype=np.int32)
    if integer:
        kinds[:K] = _SEMI_INTEGER
    h = highspy.Highs()
    h.silent()
    h.passModel(width, A.shape[0], A.nnz, int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMinimize),
                0.0, cost, col_lo, col_hi, np.concatenate(lo), np.concatenate(hi), A.indptr.astype(np.int32),
                A.indices.astype(np.int32), A.data, kinds)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", 1e-4)
    t0 = time.perf_counter()
    h.run()
    seconds = time.perf_counter() - t0
    info = h.getInfo()
    plan = np.zeros((n, T))
    sol = np.asarray(h.getSolution().col_value, dtype=float)
    if len(sol) == width:
        plan[car, slot] = sol[:K]
    import pandas as pd

    return {"status": h.modelStatusToString(h.getModelStatus()), "objective": float(info.objective_function_value),
            "bound": float(info.mip_dual_bound) if integer else float(info.objective_function_value),
            "seconds": seconds, "current_a": pd.DataFrame(plan.T, index=a["times"], columns=a["ids"])}


def plan_cost(block: dict, step: str, current_a) -> float:
    """What a plan pays in the exact model [EUR]: the price of the energy cars draw (each up to
    its need, in time order) plus 20 EUR/kWh of shortfall."""
    a = block_arrays(block, step)
    x = current_a.reindex(index=a["times"], columns=a["ids"]).fillna(0.0).to_numpy(float).T
    drawn = drawn_kwh(a, x)
    short = np.maximum(a["need"] - drawn.sum(axis=1), 0.0)
    return float((drawn * a["prices"][None, :]).sum() + SHORTFALL_EUR_PER_KWH * short.sum())


def parse_cell(label: str):
    """A matrix cell from its label, e.g. ``50-70%-tree-15min-unb``."""
    from nowblock.milp.testing import MatrixCell

    try:
        n, share, shape, step, *rest = label.split("-")
        if shape not in ("flat", "tree") or set(rest) - {"load", "unb"}:
            raise ValueError
        return MatrixCell(int(n), float(share.rstrip("%")) / 100, shape == "tree", step, "load" in rest, "unb" in rest)
    except ValueError:
        raise SystemExit(f"not a matrix cell label: {label!r} (e.g. 50-70%-tree-15min-unb)") from None


def cell_block(label: str):
    """The matrix block of a cell label (:func:`parse_cell`) and its slot step."""
    from nowblock.milp.testing import matrix_block

    cell = parse_cell(label)
    return matrix_block(cell), cell.step


def main(argv=None) -> None:
    import nowblock as nb

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cells", nargs="+", help="matrix cell labels")
    ap.add_argument("--limit-s", type=float, default=60.0, help="HiGHS's time limit on the exact model [s]")
    ap.add_argument("--energy-only", action="store_true", help="prices off: the model maximises energy")
    ap.add_argument("--save", metavar="DIR", help="write each cell's plans (ours, the exact model's best) as CSV")
    args = ap.parse_args(argv)
    for label in args.cells:
        b, step = cell_block(label)
        sched = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step=step,
                            base_load=b["base_load"], prices=b["prices"])
        if args.energy_only:
            b = {**b, "prices": None}
        ours = plan_cost(b, step, sched.current_a)
        ex = exact_model(b, step, args.limit_s)
        floor = lp_floor(b, step)
        chk = check_schedule(b, step, sched.current_a)
        need = floor["need_kwh"]
        line = (f"{label}: our plan {ours:.3f} EUR (optimizer's own gap {sched.mip_gap:.2%}); exact model "
                f"best {ex['objective']:.3f}, bound {ex['bound']:.3f} EUR ({ex['status']}, {ex['seconds']:.1f} s)")
        if args.energy_only:
            e_floor = floor["energy_kwh"]
            line += (f"; energy: ours {chk['energy_kwh'] / e_floor:.2%} of the LP floor's, exact best "
                     f"{(need - ex['objective'] / SHORTFALL_EUR_PER_KWH) / e_floor:.2%}, at most "
                     f"{(need - ex['bound'] / SHORTFALL_EUR_PER_KWH) / e_floor:.2%}")
        print(line, flush=True)
        if args.save:
            out = Path(args.save)
            out.mkdir(parents=True, exist_ok=True)
            sched.current_a.to_csv(out / f"{label}-ours.csv")
            ex["current_a"].to_csv(out / f"{label}-exact.csv")


if __name__ == "__main__":
    main()
