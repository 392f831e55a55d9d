"""Paired A/B of the coarse stage's bound ascent (:func:`nowblock.milp.coarse.improve_bound`) on
matrix cells: per cell, the call with the ascent switched off, then with it, in one process.

The ascent changes no plan, only the bound the call proves; what it costs is time. So for each
arm: call time, gap, bound, status, and the outside check of the plan
(:func:`milp_matrix.check_schedule`). ``--fine-lp`` also solves the fine LP of the cell
afterwards (minutes at 2,000 cars) to show that the bound stays below its optimum. A script, not
a pytest-benchmark: one call per arm is what the comparison needs, and the cells take 1-30 s::

    PYTHONPATH=src python benchmarks/paired_bound_ascent.py --out ascent.jsonl \\
        1000-15%-flat-5min-load-unb 2000-15%-tree-5min-load
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from exact_matrix import cell_block  # noqa: E402
from milp_matrix import check_schedule  # noqa: E402

import nowblock as nb  # noqa: E402
from nowblock.milp import solve as solve_mod  # noqa: E402
from nowblock.milp.highs_fast import solve_matrix  # noqa: E402


def _no_ascent(lagr, lam, target, stop_at, **kwargs):
    """The "without" arm: no step, and a value that never raises the call's bound."""
    return float("-inf"), lam, 0


def run(label: str, fine_lp: bool) -> dict:
    """Both arms of one cell (without, then with the ascent)."""
    b, step = cell_block(label)
    kw = dict(start=b["start"], horizon="24h", step=step, base_load=b["base_load"], prices=b["prices"])
    row: dict = {"cell": label}
    real = solve_mod.improve_bound
    try:
        for arm, fn in (("without", _no_ascent), ("with", real)):
            solve_mod.improve_bound = fn
            t = time.perf_counter()
            s = nb.optimize(b["site"], b["sessions"], **kw)
            seconds = time.perf_counter() - t
            check = check_schedule(b, step, s.current_a)
            ascent = [x for x in s.extra.get("stages", []) if x["stage"] == "bound ascent"]
            row[arm] = {"seconds": seconds, "gap": s.mip_gap, "bound": s.bound, "objective": s.objective,
                        "status": s.status, "method": s.method, "energy_kwh": check["energy_kwh"], "ok": check["ok"],
                        "ascent": ascent[0]["status"] if ascent else ""}
    finally:
        solve_mod.improve_bound = real
    if fine_lp:
        mf = s.form.matrix(relax=True)
        t = time.perf_counter()
        lp = solve_matrix(s.form, mf, 3600.0)
        row["fine_lp"] = {"status": lp.status, "optimum": lp.bound, "seconds": time.perf_counter() - t}
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", help="matrix cell labels, e.g. 1000-15%%-flat-5min-load-unb")
    ap.add_argument("--out", default="paired_bound_ascent.jsonl", help="JSON lines, appended")
    ap.add_argument("--fine-lp", action="store_true", help="also solve the fine LP (a yardstick for the bound)")
    args = ap.parse_args(argv)
    with open(args.out, "a") as out:
        for label in args.cells:
            row = run(label, args.fine_lp)
            print(json.dumps(row), file=out, flush=True)
            w, a = row["without"], row["with"]
            print(f"{label}: gap {w['gap']:.2%} -> {a['gap']:.2%}, {w['seconds']:.2f} -> {a['seconds']:.2f} s, "
                  f"{a['ascent'] or 'no ascent'}" + (f", fine LP {row['fine_lp']['optimum']:.2f}" if args.fine_lp else ""),
                  flush=True)


if __name__ == "__main__":
    main()
