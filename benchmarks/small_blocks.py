"""Small blocks planned once: ``nb.optimize`` against the whole MILP solved to optimality.

A grid engineer's own blocks (an outside test, session 34) were 5-8 cars over a few hours, and
``optimize`` returned plans 10-37 % off their bound in 0.01-0.1 s of a 10 s limit. This script
generates such blocks from parameters (families below, seeds 0..N-1), plans each with the
working tree's ``optimize`` (and, with ``--base REV``, with ``solve.py`` as it was at a git
revision, the order alternating), and compares every plan with a reference: the same model with
on/off binaries on every slot, built through Pyomo and solved by HiGHS to a zero gap. Every plan
is checked outside the optimizer (:func:`milp_matrix.check_schedule`: every fuse phase, slot,
minimum, maximum and pilot step).

    PYTHONPATH=src python3 benchmarks/small_blocks.py --seeds 6 --base HEAD~1

Per family: plans certified (``status == "optimal"``), plans more than 1 % or 0.01 EUR above the
reference's objective, plans delivering more than 0.05 kWh less than the reference, the worst
such shortfall [kWh], and the call's median and largest time [s].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import nowblock as nb  # noqa: E402
import nowblock.milp.solve as current  # noqa: E402
from milp_matrix import check_schedule  # noqa: E402
from nowblock.block.site import ChargePoint, Fuse, Site  # noqa: E402

ROTATIONS = ("L1L2L3", "L2L3L1", "L3L1L2", "L1L3L2", "L2L1L3", "L3L2L1")
#: family -> generator parameters (cars, grid fuse per phase [A], a sub-fuse [A] or None, minimums
#: [A], maxima [A], unbalance limit [A] or None, base load [kW])
FAMILIES = {
    "mixed": dict(n=6, grid=(40.0, 40.0, 40.0), sub=None, mins=(6.0,), maxs=(16.0, 32.0), unb=None, base_kw=0.0),
    "asym": dict(n=8, grid=(40.0, 20.0, 40.0), sub=None, mins=(6.0,), maxs=(16.0, 32.0), unb=None, base_kw=0.0),
    "tight": dict(n=8, grid=(25.0, 25.0, 25.0), sub=None, mins=(6.0, 8.0, 10.0), maxs=(16.0,), unb=None, base_kw=0.0),
    "tree": dict(n=6, grid=(40.0, 40.0, 40.0), sub=(13.0, 13.0, 13.0), mins=(6.0, 8.0, 10.0),
                 maxs=(10.0, 13.0, 16.0, 32.0), unb=None, base_kw=0.0),
    "unbalance": dict(n=8, grid=(40.0, 40.0, 40.0), sub=None, mins=(6.0,), maxs=(16.0,), unb=10.0, base_kw=0.0),
    "base_load": dict(n=6, grid=(50.0, 50.0, 50.0), sub=None, mins=(6.0,), maxs=(16.0, 32.0), unb=None, base_kw=20.0),
}
START = pd.Timestamp("2026-03-02 16:00", tz="UTC")
SLOT = pd.Timedelta(minutes=15)
N_SLOTS = 16


def small_block(family: str, seed: int) -> dict:
    """One block of ``family`` (see :data:`FAMILIES`): a site, a sessions frame, a base load [kW]
    and no prices, over ``N_SLOTS`` slots of 15 minutes from ``START``."""
    p = FAMILIES[family]
    rng = np.random.default_rng(seed)
    n = p["n"]
    fuses = [Fuse("grid", tuple(p["grid"]))]
    if p["sub"] is not None:
        fuses.append(Fuse("sub", tuple(p["sub"]), parent="grid"))
    cps, rows = [], []
    for i in range(n):
        cp_phases = int(rng.choice([1, 3]))
        fuse = "sub" if p["sub"] is not None and i % 2 else "grid"
        cps.append(ChargePoint(f"CP{i:02d}", fuse, float(rng.choice(p["maxs"])), float(rng.choice(p["mins"])),
                               cp_phases, str(rng.choice(ROTATIONS))))
        car_phases = int(rng.choice([1, 2, 3])) if cp_phases == 3 else 1
        arrive = int(rng.integers(0, 4))
        leave = int(rng.integers(arrive + 4, N_SLOTS + 1))
        car_max = float(rng.choice([16.0, 32.0]))
        most_kwh = min(car_max, cps[-1].max_current_a) * car_phases * 0.23 * (leave - arrive) * 0.25
        rows.append({"session_id": f"s{i}", "charge_point_id": f"CP{i:02d}", "arrival": START + arrive * SLOT,
                     "departure": START + leave * SLOT, "energy_kwh": round(float(rng.uniform(0.2, 0.9)) * most_kwh, 2),
                     "max_current_a": car_max, "phases": car_phases})
    site = Site(f"{family}-{seed}", tuple(fuses), tuple(cps), max_unbalance_a=p["unb"])
    times = pd.date_range(START, periods=N_SLOTS, freq=SLOT)
    base = pd.Series(p["base_kw"] * (1.0 + 0.3 * np.sin(np.arange(N_SLOTS) / 3.0)), index=times, name="kw")
    return {"site": site, "sessions": pd.DataFrame(rows), "base_load": base, "prices": None, "start": START}


def one(block: dict, module, **options):
    """``module.optimize`` on ``block`` with ``options``; (schedule, seconds)."""
    t = time.perf_counter()
    s = module.optimize(block["site"], block["sessions"], start=block["start"], horizon=f"{N_SLOTS * 15}min",
                        step="15min", base_load=block["base_load"], time_limit_s=10, **options)
    return s, time.perf_counter() - t


def main(argv=None) -> None:
    warnings.simplefilter("ignore")  # the sessions' "asks for more than the car can draw" notes
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6, help="blocks per family (seeds 0..N-1)")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--base", help="git revision of a second arm's solve.py (benchmarks/paired_solve.py)")
    ap.add_argument("--out", default="small_blocks.jsonl", help="JSON lines, appended")
    args = ap.parse_args(argv)
    arms = {"new": current}
    if args.base:
        from paired_solve import solve_module_at

        arms = {"old": solve_module_at(args.base), "new": current}
    rows = []
    with open(args.out, "a") as out:
        for fam in args.families:
            for seed in range(args.seeds):
                b = small_block(fam, seed)
                ref, ref_s = one(b, nb, backend="pyomo", binary_slots=None, mip_rel_gap=0.0, mip_abs_gap=0.0)
                row = {"family": fam, "seed": seed, "ref_objective": ref.objective,
                       "ref_proven": "milp: optimal" in ref.detail, "ref_short_kwh": float(ref.shortfall_kwh.sum())}
                for k, name in enumerate(arms if seed % 2 == 0 else list(arms)[::-1]):
                    s, sec = one(b, arms[name])
                    chk = check_schedule(b, "15min", s.current_a)
                    row[name] = {"status": s.status, "objective": s.objective, "gap": s.mip_gap, "seconds": sec,
                                 "short_kwh": float(s.shortfall_kwh.sum()), "ok": bool(chk["ok"]),
                                 "method": s.method}
                rows.append(row)
                print(json.dumps(row), file=out, flush=True)
    print(f"{'family':10s} {'arm':4s} {'blocks':>6s} {'certified':>9s} {'> ref +1 %':>10s} {'short > 0.05 kWh':>16s} "
          f"{'worst [kWh]':>11s} {'median s':>8s} {'max s':>6s} {'checks':>6s}")
    for fam in args.families:
        mine = [r for r in rows if r["family"] == fam and r["ref_proven"]]
        for name in arms:
            d = [r[name] for r in mine]
            above = sum(x["objective"] > r["ref_objective"] * 1.01 + 0.01 for x, r in zip(d, mine))
            short = [x["short_kwh"] - r["ref_short_kwh"] for x, r in zip(d, mine)]
            print(f"{fam:10s} {name:4s} {len(d):6d} {sum(x['status'] == 'optimal' for x in d):9d} {above:10d} "
                  f"{sum(v > 0.05 for v in short):16d} {max(short, default=0.0):11.3f} "
                  f"{np.median([x['seconds'] for x in d]):8.3f} {max(x['seconds'] for x in d):6.3f} "
                  f"{'ok' if all(x['ok'] for x in d) else 'FAILED':>6s}")


if __name__ == "__main__":
    main()
