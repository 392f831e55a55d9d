"""A small block on a fine slot grid, planned once, gets the coarse stage's plan as one more
candidate beside the fine LPs' (``nowblock.milp.solve``; issue 15's gap target, session 39).

On 50-15%-tree-5min-load of the instance matrix the fine LP's plan, rounded and polished, left
the block 2.2 kWh short of the LP and 12.4 % from its bound; the 15-minute LP's currents, held
over three fine slots, round to a plan 10 % cheaper (99.76 % of the plain LP's energy against
99.58 %). The receding horizon (``milp_prove=False``: the policy) keeps its path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nowblock as nb
from nowblock.milp import from_sessions
from nowblock.milp.formulation import OptimizeOptions
from nowblock.milp.solve import COARSE_MIN_CELLS, solve_formulation
from nowblock.milp.testing import MatrixCell, matrix_block

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from milp_matrix import check_schedule, lp_floor  # noqa: E402

CELL = MatrixCell(50, 0.15, True, "5min", True, False)


def _stages(sched) -> list[str]:
    return [s["stage"] for s in sched.extra.get("stages", [])]


def test_optimize_offers_the_coarse_plan_on_a_small_five_minute_block():
    b = matrix_block(CELL)
    s = nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step=CELL.step,
                    base_load=b["base_load"], prices=b["prices"])
    assert len(s.form.cells[0]) < COARSE_MIN_CELLS  # a small block: no coarse stage by size
    assert "coarse lp" in _stages(s) and "lp" in _stages(s)  # both, the fine LP's bound kept
    chk = check_schedule(b, CELL.step, s.current_a, step_a=1.0)
    assert chk["ok"], chk["violations"]
    floor = lp_floor(b, CELL.step)
    assert chk["energy_kwh"] >= 0.997 * floor["energy_kwh"]  # 99.58 % before, 99.76 % now
    assert s.bound <= s.objective


def test_the_receding_horizon_keeps_its_path_on_a_small_block():
    b = matrix_block(CELL)
    form = from_sessions(b["site"], b["sessions"], start=b["start"], horizon="24h", step=CELL.step,
                         base_load=b["base_load"], prices=b["prices"],
                         options=OptimizeOptions.from_kwargs(milp_prove=False))
    assert "coarse lp" not in _stages(solve_formulation(form))
