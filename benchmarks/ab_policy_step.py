"""Before/after helper for the MILP policy step: run it once per version, alternating.

    PYTHONPATH=/path/to/old/src python benchmarks/ab_policy_step.py 50 30
    python benchmarks/ab_policy_step.py 50 30

Plans ``MilpPolicy.schedule`` on fresh copies of ``plugged_in_snapshot(n)`` (with the producer
arrays a simulator gives, added here if the version's ``testing`` module does not), ``rounds``
times after two warm-up steps, and prints one JSON line: medians of the wall time, HiGHS's own
run clock, the time outside it [ms] and the median share outside. Not collected by pytest.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np

from nowblock.milp import MilpPolicy, testing


def main(n: int, rounds: int) -> dict:
    """Medians over ``rounds`` policy steps on ``n`` plugged-in cars (times in ms)."""
    snap = testing.plugged_in_snapshot(n)
    if snap.car_arrays is None:  # older versions: give what the simulator gives
        cars = snap.cars
        arrays = {c: cars[c].to_numpy(float) for c in cars.columns
                  if c not in ("charge_point_id", "arrival", "departure", "needs_known")}
        arrays.update({c: cars[c].array.as_unit("ns").asi8 for c in ("arrival", "departure")})
        inc = snap.site.phase_incidence(cars["cp_index"].to_numpy(), cars["phases"].to_numpy())
        snap = dataclasses.replace(snap, car_arrays=arrays, incidence_a=inc)
    pol = MilpPolicy(time_limit_fraction=1.0, time_limit_s=60)
    wall, clock = [], []
    for i in range(rounds + 2):
        pol.reset()
        s = dataclasses.replace(snap)  # nothing derived from it is cached yet
        t0 = time.perf_counter()
        pol.schedule(s)
        if i >= 2:
            wall.append(time.perf_counter() - t0)
            clock.append(pol.last_schedule.solve_seconds)
    w, c = np.array(wall), np.array(clock)
    return {"n": n, "wall_ms": 1e3 * float(np.median(w)), "highs_ms": 1e3 * float(np.median(c)),
            "outside_ms": 1e3 * float(np.median(w - c)), "share": float(np.median((w - c) / w))}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]))))
