"""Study throughput: cells per minute and car-hours simulated per second, Ray against a plain loop.

Run on purpose (not part of the default ``pytest``)::

    python -m pytest benchmarks/bench_study.py -p no:cacheprovider -s --benchmark-columns=mean,rounds

Each configuration runs in a fresh Python process, as a user would start it, and the parent
times it from start to exit (``total_s``); the child reports the time of the cells alone
(``run_s``) and, for Ray, the local Ray's start (``ray_init_s``):

* ``loop``: a plain ``for`` loop over ``nowblock.simulate(Scenario.default(**params), policy)``,
  the baseline, in the same run;
* ``ray-1``, ``ray-2``: ``nowblock.study(...)`` on a local Ray with 1 and 2 CPUs.

Two instance families, generated from parameters (``FAMILIES``): ``milp-mix``, 12 cells of the
default block generator (12 and 24 charging points, 1 day, 15 min steps, 3 connection sizes,
equal and milp; the MILP cells dominate), and ``heuristics``, 24 light cells (12 and 24 charging points, 2 days,
5 min steps, 3 sizes x 2 seeds, equal and edf), where Ray's per-task overhead shows. The worst
cell of each family is reported. docs/bench_study.md records the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

FAMILIES = {
    "milp-mix": {"scenario": {"days": 1, "n_charge_points": [12, 24], "grid_current_a": [40, 63, 100]},
                 "policies": ["equal", "milp"], "simulate": {"step": "15min"}},
    "heuristics": {"scenario": {"days": 2, "n_charge_points": [12, 24], "grid_current_a": [40, 63, 100],
                                "seed": [1, 2]},
                   "policies": ["equal", "edf"], "simulate": {"step": "5min"}},
}
ENGINES = ["loop", "ray-1", "ray-2"]


def _child(family: str, engine: str) -> dict:
    """One configuration, in this (fresh) process; returns what it measured."""
    t_start = time.perf_counter()
    from nowblock.block.scenario import Scenario
    from nowblock.sim.simulator import simulate
    from nowblock.studies import Study, study

    spec = Study.from_dict(FAMILIES[family])
    cells = spec.cells()
    out = {"family": family, "engine": engine, "cells": len(cells), "ray_init_s": 0.0}
    if engine == "loop":
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        car_h, worst = 0.0, 0.0
        for c in cells:
            t_c = time.perf_counter()
            res = simulate(Scenario.default(**c.scenario), c.policy, **c.simulate)
            worst = max(worst, time.perf_counter() - t_c)
            car_h += res.metrics["car_hours"]
        out.update(run_s=time.perf_counter() - t0, car_hours=car_h, worst_cell_s=worst, failed=0,
                   cell_cpu_s=time.process_time() - cpu0)
    else:
        import logging

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=int(engine.split("-")[1]), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, object_store_memory=256 * 1024**2)
        t1 = time.perf_counter()
        table = study(spec, progress=False)
        t2 = time.perf_counter()
        ray.shutdown()
        ok = table["status"] == "ok"
        out.update(ray_init_s=t1 - t0, run_s=t2 - t1, car_hours=float(table.loc[ok, "car_hours"].sum()),
                   worst_cell_s=float(table["cell_seconds"].max()), failed=int((~ok).sum()),
                   cell_cpu_s=float(table["cell_cpu_seconds"].sum()),
                   workers_used=int(table["worker_pid"].nunique()),
                   warm_up_s_total=float(table["warm_up_seconds"].sum()))
    out["in_process_s"] = time.perf_counter() - t_start
    out["load_average_1min"] = os.getloadavg()[0]
    return out


def _run(family: str, engine: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, family, engine], capture_output=True, text=True, timeout=1800)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["total_s"] = total
    return res


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("engine", ENGINES)
def test_study_throughput(benchmark, family, engine):
    benchmark.group = f"study {family}"
    res = benchmark.pedantic(_run, args=(family, engine), rounds=1, iterations=1, warmup_rounds=0)
    assert res["failed"] == 0
    benchmark.extra_info.update(
        cells=res["cells"], total_s=round(res["total_s"], 2), run_s=round(res["run_s"], 2),
        ray_init_s=round(res["ray_init_s"], 2),
        cells_per_min_total=round(60 * res["cells"] / res["total_s"], 1),
        cells_per_min_run=round(60 * res["cells"] / res["run_s"], 1),
        car_hours=round(res["car_hours"], 1),
        car_hours_per_s_total=round(res["car_hours"] / res["total_s"], 1),
        car_hours_per_s_run=round(res["car_hours"] / res["run_s"], 1),
        worst_cell_s=round(res["worst_cell_s"], 2), cell_cpu_s=round(res["cell_cpu_s"], 2),
        car_hours_per_cpu_s=round(res["car_hours"] / res["cell_cpu_s"], 1),
        load_average_1min=round(res["load_average_1min"], 1),
        workers_used=res.get("workers_used", 1), warm_up_s_total=round(res.get("warm_up_s_total", 0.0), 2),
    )
    print(f"\n{family} {engine}: {json.dumps(benchmark.extra_info)}")


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2])))


def test_cell_cost_per_policy(benchmark):
    """The CPU cost of one cell per policy (the basis of docs/bench_study.md's extrapolation):
    the default block (24 charging points), 2 days at the 63 A connection, 5 and 15 min steps,
    run in this process; car-hours per CPU-second per policy and step."""
    from nowblock.studies import study

    benchmark.group = "cell cost"
    table = benchmark.pedantic(study, kwargs=dict(
        scenario={"days": 2, "grid_current_a": 63.0}, policies=["uncontrolled", "equal", "edf", "milp"],
        simulate={"step": ["5min", "15min"]}, engine="process", progress=False), rounds=1, iterations=1)
    assert (table["status"] == "ok").all()
    for _, r in table.iterrows():
        key = f"{r['policy']}@{r['simulate.step']}"
        benchmark.extra_info[key] = {"cpu_s": round(r["cell_cpu_seconds"], 2), "wall_s": round(r["cell_seconds"], 2),
                                     "car_hours": round(r["car_hours"], 1),
                                     "car_hours_per_cpu_s": round(r["car_hours"] / r["cell_cpu_seconds"], 1)}
    benchmark.extra_info["load_average_1min"] = round(os.getloadavg()[0], 1)
    print(f"\ncell cost: {json.dumps(benchmark.extra_info)}")
