"""Paired A/B of the optimizer's solve step: ``nowblock.milp.solve`` as it was at a git revision
against the working tree's, on instance-matrix cells, in one process, the arms alternating.

    PYTHONPATH=src python benchmarks/paired_solve.py --base HEAD~1 --repeat 2 --out ab.jsonl \\
        200-15%-tree-5min-unb 1000-35%-flat-5min-unb ...

Only ``solve.py`` is taken from the revision (as a module of its own, importing everything else
from the working tree), so it measures changes made there; a base whose ``solve.py`` needs
other modules as they were at that revision fails at import or at its first call. Every plan
of both arms is checked outside the optimizer (:func:`milp_matrix.check_schedule`). One JSON
line a cell: per arm the call times [s], the gap, objective [EUR], bound, status, method,
stages and the check; a line per cell is printed (median times).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import nowblock.milp.solve as current  # noqa: E402
from exact_matrix import cell_block  # noqa: E402
from milp_matrix import check_schedule  # noqa: E402


def solve_module_at(revision: str):
    """``src/nowblock/milp/solve.py`` at ``revision``, imported as a separate module."""
    text = subprocess.run(["git", "show", f"{revision}:src/nowblock/milp/solve.py"], cwd=HERE.parent,
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "solve_base.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("solve_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(label: str, arms: dict, repeat: int) -> dict:
    """Both arms on one cell, ``repeat`` calls each, the order alternating."""
    b, step = cell_block(label)
    kw = dict(start=b["start"], horizon="24h", step=step, base_load=b["base_load"], prices=b["prices"])
    row: dict = {"cell": label}
    names = list(arms)
    for r in range(repeat):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            s = arms[name].optimize(b["site"], b["sessions"], **kw)
            seconds = time.perf_counter() - t
            check = check_schedule(b, step, s.current_a)
            d = row.setdefault(name, {"s": [], "ok": True})
            d["s"].append(seconds)
            d["ok"] = bool(d["ok"] and check["ok"])
            d.update(gap=s.mip_gap, obj=s.objective, bound=s.bound, status=s.status, method=s.method,
                     energy_kwh=check["energy_kwh"],
                     stages=[(x["stage"], x["status"], round(x["seconds"], 3)) for x in s.extra.get("stages", [])])
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", nargs="+", help="matrix cell labels, e.g. 200-15%%-tree-5min-unb")
    ap.add_argument("--base", default="HEAD", help="git revision of the 'old' arm's solve.py")
    ap.add_argument("--repeat", type=int, default=1, help="calls per arm and cell (alternating order)")
    ap.add_argument("--out", default="paired_solve.jsonl", help="JSON lines, appended")
    args = ap.parse_args(argv)
    arms = {"old": solve_module_at(args.base), "new": current}
    with open(args.out, "a") as out:
        for label in args.cells:
            row = run(label, arms, args.repeat)
            print(json.dumps(row), file=out, flush=True)
            o, n = row["old"], row["new"]
            print(f"{label:28s} old {np.median(o['s']):6.2f} s {o['gap']:7.2%} {o['obj']:10.2f} | new "
                  f"{np.median(n['s']):6.2f} s {n['gap']:7.2%} {n['obj']:10.2f} {n['method']}"
                  + ("" if o["ok"] and n["ok"] else "  CHECK FAILED"), flush=True)


if __name__ == "__main__":
    main()
