"""The optimizer's path and plan do not depend on how fast the machine is.

A busy controller computer must get the same plan as an idle one, only later (the time limit
still bounds the call). Session 37 found the path after the LP without the peak term chosen by
that LP's measured time (the whole LP cold if it took <= 50 ms, else the mean-peak LP): under
load a 50-car block's plan went from 3 % to 19 % off its bound.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import nowblock as nb
from nowblock.milp import solve as solve_mod
from nowblock.milp.testing import MatrixCell, matrix_block


class _SlowClock:
    """``time`` for :mod:`nowblock.milp.solve` with ``perf_counter`` running ``factor`` times
    fast from the moment it is made: every stage seems to take ``factor`` times as long, as on
    a machine that much slower. Other modules keep the real clock; their deadlines, read on
    this one, only lie later."""

    def __init__(self, factor: float) -> None:
        self.factor, self.origin = factor, time.perf_counter()

    def perf_counter(self) -> float:
        return self.origin + self.factor * (time.perf_counter() - self.origin)

    def __getattr__(self, name):
        return getattr(time, name)


def _plan(monkeypatch, factor: float):
    monkeypatch.setattr(solve_mod, "time", _SlowClock(factor))
    b = matrix_block(MatrixCell(50, 0.70, True, "15min", False, True))
    return nb.optimize(b["site"], b["sessions"], start=b["start"], horizon="24h", step="15min",
                       milp_effort=0.0, time_limit_s=3600.0)


def test_a_slow_machine_takes_the_same_path_to_the_same_plan(monkeypatch):
    """50 cars, tree, 70 %, unbalance limit: with every stage seeming 200 times as long (a 5 ms
    LP reads as 1 s) the call makes the same stages and the same plan as with the real clock."""
    fast = _plan(monkeypatch, 1.0)
    slow = _plan(monkeypatch, 200.0)
    stages = [s["stage"] for s in fast.extra["stages"]]
    assert [s["stage"] for s in slow.extra["stages"]] == stages
    assert "lp" in stages and "mean-peak lp" not in stages
    assert slow.method == fast.method
    np.testing.assert_array_equal(slow.plan_a, fast.plan_a)
    assert slow.objective == pytest.approx(fast.objective, rel=1e-12)
