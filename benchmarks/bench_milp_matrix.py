"""The optimizer on an instance matrix generated from parameters (issue 15); pytest-benchmark.

    pytest benchmarks/bench_milp_matrix.py --benchmark-only -p no:cacheprovider \\
        --benchmark-json=bench_milp_matrix.json                      # the representative sub-grid
    NOWBLOCK_MILP_MATRIX=full pytest benchmarks/bench_milp_matrix.py --benchmark-only ...  # all 192 cells
    python benchmarks/milp_matrix.py bench_milp_matrix.json [more.json ...]   # the markdown table (chunks: all files)

Each cell (:func:`milp_matrix.cells`; blocks from :func:`nowblock.milp.testing.matrix_block`,
the public contract only) records in ``extra_info``:

- ``call_s``: ``nb.optimize(...)`` with the documented defaults (time limit 30 s), median of
  3 calls (1 from 1,000 cars on); ``floor_s``: the plain LP of the same cars built and solved in
  plain highspy in the same run (:func:`milp_matrix.lp_floor`), median over as many runs;
  ``ratio`` = call / floor;
- ``gap``: the returned plan's relative distance to the proven bound (the plan's own objective),
  ``status`` and ``method``;
- ``peak_mb``: tracemalloc's peak during one call (Python and numpy; HiGHS's own C++ memory is
  not seen), ``rss_mb``: the process's peak resident memory so far;
- ``ok``/``violations``: :func:`milp_matrix.check_schedule`, computed outside the optimizer;
  ``energy_share``: the plan's energy (counted up to each need) over the LP floor's;
  ``short_cars``; ``nothing_binds``: no fuse phase of the plan above 99 % of its room;
- ``limited_*``: the same call with a time limit of half the measured call time (at least
  0.25 s: below that the sessions frame's validation alone is a tenth of the limit): how long
  it took against that limit, and what it returned.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import nowblock as nb  # noqa: E402
from milp_matrix import cells, check_schedule, lp_floor  # noqa: E402
from nowblock.milp.testing import MatrixCell, matrix_block  # noqa: E402

CELLS = cells()


@pytest.fixture(scope="module", autouse=True)
def _warm():
    from nowblock.milp import MilpPolicy

    MilpPolicy.warm_up()  # numba kernels compiled (or loaded) before any clock runs
    b = matrix_block(MatrixCell(20, 0.35, True, "15min", True, True))
    nb.optimize(b["site"], b["sessions"], start=b["start"], base_load=b["base_load"], prices=b["prices"])
    lp_floor(b, "15min")


def _call(b, cell, **opts):
    return nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step=cell.step,
                       base_load=b["base_load"], prices=b["prices"], **opts)


def run_cell(cell: MatrixCell, rounds: int | None = None) -> dict:
    """Measure one cell (module docstring); returns the figures and the last schedule."""
    b = matrix_block(cell)
    rounds = rounds or (3 if cell.n_cars < 1000 else 1)
    calls, floors, sched = [], [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        sched = _call(b, cell)
        calls.append(time.perf_counter() - t0)
        floors.append(lp_floor(b, cell.step))
    tracemalloc.start()
    _call(b, cell)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    floor = floors[-1]
    chk = check_schedule(b, cell.step, sched.current_a, step_a=1.0)
    call_s, floor_s = statistics.median(calls), statistics.median(f["seconds"] for f in floors)
    limit = max(0.5 * call_s, 0.25)
    t0 = time.perf_counter()
    lim = _call(b, cell, time_limit_s=limit)
    limited_s = time.perf_counter() - t0
    lim_chk = check_schedule(b, cell.step, lim.current_a, step_a=1.0)
    stages = sched.extra.get("stages", [])
    return {
        "cell": cell.label, "n_cars": cell.n_cars, "fuse_share": cell.fuse_share, "tree": cell.tree,
        "step": cell.step, "load_and_prices": cell.load_and_prices, "unbalance": cell.unbalance,
        "call_s": call_s, "calls_s": calls, "floor_s": floor_s, "floor_build_s": floor["build_s"],
        "ratio": call_s / floor_s, "gap": float(sched.mip_gap), "objective_eur": float(sched.objective),
        "bound_eur": float(sched.bound), "status": sched.status, "method": sched.method,
        "lp_stage_s": float(stages[0]["seconds"]) if stages else float("nan"),
        "milp_stage": any(s["stage"] == "milp" for s in stages),
        "peak_mb": peak / 2**20, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ok": chk["ok"], "violations": chk["violations"], "energy_share": chk["energy_kwh"] / max(floor["energy_kwh"], 1e-9),
        "energy_kwh": chk["energy_kwh"], "floor_energy_kwh": floor["energy_kwh"], "need_kwh": floor["need_kwh"],
        "short_cars": chk["short_cars"], "peak_load_share": chk["peak_load_share"],
        "unbalance_share": chk["unbalance_share"],
        "nothing_binds": chk["peak_load_share"] <= 0.99 and chk["unbalance_share"] <= 0.99,
        "limited_limit_s": limit, "limited_s": limited_s, "limited_over": limited_s / limit,
        "limited_status": lim.status, "limited_method": lim.method, "limited_gap": float(lim.mip_gap),
        "limited_ok": lim_chk["ok"], "limited_energy_share": lim_chk["energy_kwh"] / max(floor["energy_kwh"], 1e-9),
    }


@pytest.mark.parametrize("cell", CELLS, ids=[c.label for c in CELLS])
def test_matrix_cell(benchmark, cell):
    out = {}

    def once():
        out.update(run_cell(cell))

    benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["ok"], out["violations"]  # a plan that breaks a limit is a defect, not a slow cell
    assert out["limited_ok"], "the time-limited plan broke a limit"


def test_issue_instance(benchmark):
    """The instance of the issue: 200 three-phase cars (no single-phase car) under one grid fuse
    at 35 % of the points' maxima, 96 slots, no base load, no prices (target: <= 0.5 s)."""
    cell = MatrixCell(200, 0.35)
    b = matrix_block(cell, single_phase_car_share=0.0)
    sched = benchmark.pedantic(lambda: _call(b, cell), rounds=5, iterations=1, warmup_rounds=1)
    floors = [lp_floor(b, cell.step)["seconds"] for _ in range(5)]
    chk = check_schedule(b, cell.step, sched.current_a)
    benchmark.extra_info.update({"floor_s": float(np.median(floors)), "gap": float(sched.mip_gap),
                                 "status": sched.status, "method": sched.method, "ok": chk["ok"],
                                 "short_cars": chk["short_cars"], "energy_kwh": chk["energy_kwh"]})
    assert chk["ok"], chk["violations"]
