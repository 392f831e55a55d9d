"""Matrix cells moved off the matrix's own shape: a start at 17:07 and departures on whole minutes
(issue 15; docs/benchmarks.md, session 39).

The instance matrix (:func:`nowblock.milp.testing.matrix_block`) plugs every car in at 17:00 and
lets it leave on a quarter hour, which a 15-minute coarse stage (5-minute grids from
``solve.COARSE_MIN_CELLS`` car-slots) fits exactly. Here the same cars start at ``--start`` and
leave after a whole number of minutes (uniform over 2..24 h), and the same block again with
each departure rounded to the nearest clock quarter hour. Each block is planned twice in one
process, in alternating order: as ``optimize`` plans it (``default``) and with the coarse stage
switched off (``fine``: ``COARSE_MIN_CELLS`` raised past the block and no coarse factor, so no
coarse candidate on small blocks either), so the coarse stage's own cost in quality is the
difference. Per plan: objective [EUR], the reported bound and gap,
the energy it delivers (counted up to each need) as a share of the plain LP's of the same cars
(:func:`milp_matrix.lp_floor`), the outside feasibility check (:func:`milp_matrix.check_schedule`),
the method, and the call time (only the ratio of the two arms in the same round counts).

Usage::

    PYTHONPATH=src python3 benchmarks/paired_offgrid.py --cars 50,200 --rounds 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

import nowblock as nb  # noqa: E402
from milp_matrix import check_schedule, lp_floor  # noqa: E402
from nowblock.milp import solve as solve_mod  # noqa: E402
from nowblock.milp.testing import MatrixCell, matrix_block  # noqa: E402


def offgrid_block(cell: MatrixCell, start: str, quarter: bool, seed: int = 0) -> dict:
    """The block of ``cell`` (:func:`matrix_block`) starting at ``start``, each car leaving after a
    uniform whole number of minutes in 2..24 h (``quarter``: that departure rounded to the nearest
    clock quarter hour, at least 15 minutes after the start), its energy capped at 90 % of what
    16 A on its phases delivers by then. The same cars (phases, energies drawn) either way."""
    b = matrix_block(cell, seed=seed, start=start)
    s = b["sessions"].copy()
    rng = np.random.default_rng([seed, cell.n_cars, 39])
    t0 = pd.Timestamp(start)
    dep = t0 + pd.to_timedelta(rng.integers(120, 24 * 60 + 1, len(s)), unit="min")
    if quarter:
        dep = pd.DatetimeIndex(dep).round("15min")
        dep = dep.where(dep > t0, (t0 + pd.Timedelta("1min")).ceil("15min"))
    dwell_h = (pd.DatetimeIndex(dep) - t0) / pd.Timedelta("1h")
    can_kwh = 16.0 * s["phases"].to_numpy() * b["site"].voltage_v / 1000.0 * np.asarray(dwell_h, dtype=float)
    # the matrix's energies were capped on its own dwell: redraw the uncapped ones by the same law
    energy = np.minimum(rng.uniform(5.0, 40.0, len(s)), 0.9 * can_kwh)
    s["departure"] = pd.DatetimeIndex(dep)
    s["energy_kwh"] = energy
    return {**b, "sessions": s, "start": t0}


def plan(b: dict, step: str, fine: bool) -> dict:
    """One ``optimize`` call on block ``b``; ``fine``: without the coarse stage (or its candidate)."""
    saved = solve_mod.COARSE_MIN_CELLS, solve_mod.coarse_factor
    if fine:  # neither the coarse stage nor, below COARSE_MIN_CELLS, its candidate plan
        solve_mod.COARSE_MIN_CELLS, solve_mod.coarse_factor = 10**12, lambda form: 1
    try:
        t = time.perf_counter()
        s = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step=step,
                        base_load=b["base_load"], prices=b["prices"])
        dt = time.perf_counter() - t
    finally:
        solve_mod.COARSE_MIN_CELLS, solve_mod.coarse_factor = saved
    chk = check_schedule(b, step, s.current_a, step_a=1.0)
    return {"seconds": dt, "objective": float(s.objective), "bound": float(s.bound), "gap": float(s.mip_gap),
            "status": s.status, "method": s.method, "ok": chk["ok"], "violations": chk["violations"],
            "energy_kwh": chk["energy_kwh"], "short_cars": chk["short_cars"],
            "stages": [st.get("stage") for st in s.extra.get("stages", [])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cars", default="50,200")
    ap.add_argument("--start", default="2026-01-14 17:07+00:00")
    ap.add_argument("--step", default="5min")
    ap.add_argument("--fuse", default="0.15,0.35,0.70")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--arms", default="default,fine")
    ap.add_argument("--load", action="store_true", help="the cells with base load and prices")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from nowblock.milp import MilpPolicy

    MilpPolicy.warm_up()
    out = []
    arms = args.arms.split(",")
    for n in (int(x) for x in args.cars.split(",")):
        for share in (float(x) for x in args.fuse.split(",")):
            for tree in (False, True):
                for unb in (False, True):
                    cell = MatrixCell(n, share, tree, args.step, args.load, unb)
                    for quarter in (False, True):
                        b = offgrid_block(cell, args.start, quarter)
                        floor = lp_floor(b, args.step)
                        for r in range(args.rounds):
                            order = arms if r % 2 == 0 else arms[::-1]
                            for arm in order:
                                p = plan(b, args.step, arm == "fine")
                                p.update({"cell": cell.label, "departures": "quarter" if quarter else "minutes",
                                          "arm": arm, "round": r, "lp_energy_kwh": floor["energy_kwh"],
                                          "lp_objective": floor["objective"],
                                          "energy_share": p["energy_kwh"] / max(floor["energy_kwh"], 1e-9)})
                                out.append(p)
                                print(f"{cell.label:24s} {p['departures']:7s} {arm:7s} {p['seconds']:6.2f}s "
                                      f"obj {p['objective']:10.2f} gap {100 * p['gap']:6.2f} % "
                                      f"energy {100 * p['energy_share']:7.3f} % short {p['short_cars']:3d} "
                                      f"{'ok' if p['ok'] else 'FAIL ' + str(p['violations'])} {p['method']}",
                                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
