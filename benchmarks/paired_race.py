"""Whole ``nowblock.optimize`` calls on one instance-matrix cell with the coarse LP's race set
differently, alternating in the same run (issue 15; docs/benchmarks.md, session 37).

On a shared machine single calls say little: each round runs every variant once, back to back,
and the medians are compared. Variants: ``race`` (the default: the interior point joins after the
simplex has run ``RACE_DELAY_SHARE`` of the race's limit), ``atonce`` (both solvers from the
start, the code before session 37), ``simplex`` and ``ipm`` (one solver alone).

Usage::

    PYTHONPATH=src python3 benchmarks/paired_race.py 1000-15%-tree-5min-load-unb atonce,race 3

The cell label is the matrix's (``bench_milp_matrix.py``): cars, grid fuse share, ``flat`` or
``tree``, step, then ``load`` and/or ``unb`` when on. Every returned plan is checked outside the
optimizer (every fuse phase, slot, 0 or at least the minimum) and its energy is given as a share
of the plain LP's of the same cars.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nowblock as nb  # noqa: E402
from milp_matrix import check_schedule, lp_floor  # noqa: E402
from nowblock.milp import MilpPolicy, highs_fast  # noqa: E402
from nowblock.milp.testing import MatrixCell, matrix_block  # noqa: E402

_DEFAULT_SOLVERS, _DEFAULT_DELAY = highs_fast.RACE_SOLVERS, highs_fast.RACE_DELAY_SHARE
#: variant -> (solvers raced, the interior point's delay as a share of the race's limit)
VARIANTS = {"race": (_DEFAULT_SOLVERS, _DEFAULT_DELAY), "atonce": (_DEFAULT_SOLVERS, 0.0),
            "simplex": (("simplex",), _DEFAULT_DELAY), "ipm": (("ipm",), _DEFAULT_DELAY)}


def parse_cell(label: str) -> MatrixCell:
    """The matrix cell named ``label`` (e.g. ``"1000-15%-tree-5min-load-unb"``)."""
    p = label.split("-")
    return MatrixCell(int(p[0]), int(p[1].rstrip("%")) / 100, p[2] == "tree", p[3], "load" in p[4:], "unb" in p[4:])


def main(label: str, variants: list[str], rounds: int) -> dict[str, list[float]]:
    """Time ``rounds`` calls of each variant on the cell, alternating; print each and the medians [s]."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    cell = parse_cell(label)
    block = matrix_block(cell)
    MilpPolicy.warm_up()  # numba's compilation is not part of a call
    floor = lp_floor(block, cell.step)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for r in range(rounds):
            for v in variants:
                highs_fast.RACE_SOLVERS, highs_fast.RACE_DELAY_SHARE = VARIANTS[v]
                t0 = time.perf_counter()
                s = nb.optimize(block["site"], block["sessions"], start=block["start"], horizon="24h",
                                step=cell.step, base_load=block["base_load"], prices=block["prices"])
                dt = time.perf_counter() - t0
                chk = check_schedule(block, cell.step, s.current_a, step_a=1.0)
                seconds[v].append(dt)
                print(f"{v:8s} round {r}: {dt:6.2f} s, {s.status}, gap {s.mip_gap:.4f}, feasible {chk['ok']}, "
                      f"energy {chk['energy_kwh'] / floor['energy_kwh']:.5f} of the LP's", flush=True)
    finally:
        highs_fast.RACE_SOLVERS, highs_fast.RACE_DELAY_SHARE = _DEFAULT_SOLVERS, _DEFAULT_DELAY
    for v in variants:
        print(f"{v}: median {statistics.median(seconds[v]):.2f} s of {[round(x, 2) for x in seconds[v]]}")
    return seconds


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]))
