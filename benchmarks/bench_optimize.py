"""Benchmarks of the MILP allocator (pytest-benchmark; run on purpose, not collected by `pytest`).

    pytest benchmarks/bench_optimize.py --benchmark-only --benchmark-json=bench_optimize.json

- ``test_planning_step[n]``: one planning step (formulation from the sessions frame, LP stage,
  real plan, re-check, MILP stage if needed) for ``n`` plugged-in cars, 96 slots of 15 min.
  ``extra_info`` holds HiGHS's own solve time, the build time, the share of the step spent
  outside HiGHS, the gap between the plan's objective and the LP relaxation's bound, and the
  status. The instance matrix of issue 15 is ``bench_milp_matrix.py``.
- ``test_lp_relaxation[n]``: the same step's LP relaxation (the floor the step can reach).
- ``test_pyomo_build[n]``: building the same formulation as a Pyomo model.
- ``test_policy_step[n]``: ``MilpPolicy.schedule`` on a plugged-in snapshot (the live path);
  ``test_policy_step_breakdown[n]`` splits its time outside HiGHS's solve into parts.
- ``test_quality[variant]``: energy, cost, peak and overload in simulation for every policy and
  the offline perfect-foresight optimum (default block and a congested variant).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

import nowblock as nb
from nowblock.milp import OptimizeOptions, from_sessions, solve_formulation
from nowblock.milp.highs_fast import solve_highs
from nowblock.milp.offline import offline_energy_kwh
from nowblock.milp.testing import plugged_in_block

SIZES = [50, 200, 500, 1000, 2000]


def _form(n: int, **opts):
    b = plugged_in_block(n, seed=n)
    return b, lambda: from_sessions(b["site"], b["sessions"], start=b["start"], horizon="24h", step="15min",
                                    base_load=b["base_load"], prices=b["prices"],
                                    options=OptimizeOptions(time_limit_s=60, **opts))


@pytest.mark.parametrize("n", SIZES)
def test_planning_step(benchmark, n):
    _, make = _form(n)
    stats = []

    def step():
        t0 = time.perf_counter()
        form = make()  # the sessions-frame adapter (validation, slot grid, caps)
        t1 = time.perf_counter()
        s = solve_formulation(form)
        stats.append((time.perf_counter() - t0, t1 - t0, s))
        return s

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    lp = solve_highs(make(), relax=True)
    walls = np.array([w for w, _, _ in stats])
    adapter = np.array([a for _, a, _ in stats])
    highs = np.array([s.solve_seconds for _, _, s in stats])
    last = stats[-1][2]
    benchmark.extra_info.update({
        "n_cars": n, "status": [s.status for _, _, s in stats], "detail": last.detail,
        "wall_median_s": float(np.median(walls)), "highs_median_s": float(np.median(highs)),
        "adapter_median_s": float(np.median(adapter)),
        "build_median_s": float(np.median([s.build_seconds for _, _, s in stats])),
        "outside_highs_share": float(np.median((walls - highs) / walls)),
        "outside_highs_share_model_only": float(np.median((walls - adapter - highs) / (walls - adapter))),
        "mip_gap_reported": last.mip_gap, "objective_eur": last.objective, "lp_bound_eur": lp.objective,
        "gap_to_lp_bound": (last.objective - lp.objective) / abs(last.objective), "lp_highs_s": lp.solve_seconds,
        "n_cells": int(len(make().cells[0])),
    })


@pytest.mark.parametrize("n", [50, 200, 500, 1000])
def test_planning_step_plain_milp(benchmark, n):
    """The same step solved as one MILP by HiGHS (binaries in the first 8 slots, continuous currents),
    without the LP stage and the rounding (for comparison)."""
    from nowblock.milp.highs_fast import solve_matrix

    _, make = _form(n)
    res = benchmark.pedantic(lambda: (lambda f: solve_matrix(f, f.matrix(), 120.0))(make()), rounds=1, iterations=1)
    benchmark.extra_info.update({"n_cars": n, "status": res.status, "highs_s": res.solve_seconds,
                                 "objective_eur": res.objective, "mip_gap": res.mip_gap})


@pytest.mark.parametrize("n", SIZES)
def test_lp_relaxation(benchmark, n):
    _, make = _form(n)
    res = benchmark.pedantic(lambda: solve_highs(make(), relax=True), rounds=3, iterations=1)
    benchmark.extra_info.update({"n_cars": n, "highs_s": res.solve_seconds, "objective_eur": res.objective})


@pytest.mark.parametrize("n", [50, 200, 500])
def test_pyomo_build(benchmark, n):
    from nowblock.milp.pyomo_model import build_model

    _, make = _form(n)
    form = make()
    form.matrix()  # the shared arrays; what is timed is the Pyomo side
    benchmark.pedantic(lambda: build_model(form), rounds=2, iterations=1)
    benchmark.extra_info.update({"n_cars": n})


@pytest.mark.parametrize("variant", ["default", "congested", "tight", "scarce"])
def test_quality(benchmark, variant):
    from nowblock.milp import solve_offline

    days = 3
    scn = nb.Scenario.default(days=days)
    # Wallboxes' total rating as a per-phase current [A] (single-phase boxes spread over phases).
    rating_a = float(sum(c.max_current_a * c.phases for c in scn.site.charge_points)) / 3
    if variant == "congested":  # the issue's variant: a third of the wallboxes' total rating
        scn = nb.Scenario.default(days=days, grid_current_a=round(rating_a / 3))
    elif variant == "tight":  # a sixth: the households' evening peak leaves little room
        scn = nb.Scenario.default(days=days, grid_current_a=round(rating_a / 6))
    elif variant == "scarce":  # a tenth: not every car can be served, sharing decides
        scn = nb.Scenario.default(days=days, grid_current_a=round(rating_a / 10))
    out = {}

    def run():
        for p in ("uncontrolled", "equal", "edf", "llf", "milp"):
            out[p] = nb.simulate(scn, policy=p).metrics
        return out

    benchmark.pedantic(run, rounds=1, iterations=1)
    off = solve_offline(scn)
    info = {"root_a": scn.site.root.max_current_a[0], "days": days, "wallbox_rating_a": rating_a,
            "offline_energy_kwh": offline_energy_kwh(off, scn.sessions.set_index("session_id")["energy_kwh"]),
            "offline_status": off.status}
    for p, m in out.items():
        info[p] = {k: m[k] for k in ("energy_delivered_kwh", "energy_requested_kwh", "demand_met", "max_overload_a",
                                     "cost_eur", "peak_kw", "solve_seconds_median", "solve_seconds_max")}
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("n", SIZES)
def test_policy_step(benchmark, monkeypatch, n):
    """One receding-horizon step as the simulator and the live loop call it:
    ``MilpPolicy.schedule(snapshot)`` (snapshot adapter, matrix, HiGHS, rounding, then the
    policy's safety net, top-up and answer). ``planning_*`` in ``extra_info``: the planning step
    inside it alone (adapter, matrix, HiGHS, rounding: ``formulation`` + ``solve_formulation``)."""
    import nowblock.milp.policy as pol_mod
    from nowblock.milp import MilpPolicy
    from nowblock.milp.testing import plugged_in_snapshot

    snap0 = plugged_in_snapshot(n)
    pol = MilpPolicy(time_limit_fraction=1.0, time_limit_s=60)
    stats = []
    planning = [0.0]

    def timed(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                planning[0] += time.perf_counter() - t0
        return run

    monkeypatch.setattr(pol, "formulation", timed(pol.formulation))
    monkeypatch.setattr(pol_mod, "solve_formulation", timed(pol_mod.solve_formulation))

    def step():
        pol.reset()  # no warm start: every round the same cold step
        snap = dataclasses.replace(snap0)  # a fresh snapshot: nothing derived from it is cached yet
        planning[0] = 0.0
        t0 = time.perf_counter()
        out = pol.schedule(snap)
        stats.append((time.perf_counter() - t0, pol.last_schedule, planning[0]))
        return out

    # Small steps take ~10 ms: 5 rounds are at the mercy of the shared machine's load.
    rounds = 30 if n <= 200 else 10 if n <= 500 else 5
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = stats[1:]  # the warm-up round
    walls = np.array([w for w, _, _ in stats])
    highs = np.array([s.solve_seconds for _, s, _ in stats])
    plan = np.array([p for _, _, p in stats])
    run_call = np.array([s.extra.get("run_call_seconds", 0.0) for _, s, _ in stats])
    benchmark.extra_info.update({
        "n_cars": n, "rounds": rounds, "status": [s.status for _, s, _ in stats], "detail": stats[-1][1].detail,
        "outside_highs_median_s": float(np.median(walls - highs)),
        "wall_median_s": float(np.median(walls)), "highs_median_s": float(np.median(highs)),
        "outside_highs_share": float(np.median((walls - highs) / walls)),
        "planning_median_s": float(np.median(plan)),
        "planning_outside_highs_share": float(np.median((plan - highs) / plan)),
        # The same step with HiGHS's whole run() call counted as its solve (its own clock
        # misses model checks and solution bookkeeping inside the call).
        "run_call_median_s": float(np.median(run_call)),
        "outside_run_call_share": float(np.median((walls - run_call) / walls)),
    })


@pytest.mark.parametrize("n", [50, 200])
def test_policy_step_breakdown(benchmark, monkeypatch, n):
    """Where a policy step's time outside HiGHS's solve goes: each part timed by wrapping it
    (``extra_info["parts_ms"]``, mean per step; the parts nest as listed in the docs)."""
    import nowblock.milp.matrix as matrix_mod
    import nowblock.milp.policy as pol_mod
    import nowblock.milp.solve as solve_mod
    from nowblock.milp import MilpPolicy
    from nowblock.milp.testing import plugged_in_snapshot

    spent: dict[str, float] = {}

    def wrap(module, name):
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        monkeypatch.setattr(module, name, timed)

    for module, name in [(pol_mod, "from_snapshot"), (matrix_mod, "build_matrix"), (solve_mod, "solve_matrix"),
                         (solve_mod, "real_plan"), (solve_mod, "make_plan"), (solve_mod, "plan_objective"),
                         (solve_mod, "plan_schedule"), (pol_mod, "safe_setpoints_a"), (pol_mod, "top_up_first_slot_a")]:
        wrap(module, name)
    snap0 = plugged_in_snapshot(n)
    pol = MilpPolicy(time_limit_fraction=1.0, time_limit_s=60)
    totals = []

    def step():
        pol.reset()
        snap = dataclasses.replace(snap0)
        t0 = time.perf_counter()
        pol.schedule(snap)
        totals.append((time.perf_counter() - t0, pol.last_schedule.solve_seconds))

    step()
    spent.clear()
    totals.clear()
    rounds = 40
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    wall = sum(w for w, _ in totals) / len(totals)
    highs = sum(h for _, h in totals) / len(totals)
    parts = {k: 1e3 * v / len(totals) for k, v in spent.items()}
    parts["highs_outside_run_clock"] = parts.get("solve_matrix", 0.0) - 1e3 * highs
    benchmark.extra_info.update({"n_cars": n, "wall_mean_ms": 1e3 * wall, "highs_mean_ms": 1e3 * highs,
                                 "outside_mean_ms": 1e3 * (wall - highs), "parts_ms": parts})


def test_quality_week(benchmark):
    """The full default week (``Scenario.default()``): energy, cost and peak of edf, llf and
    milp, and the sessions milp leaves shorter than edf (the trace that found the gaps)."""
    scn = nb.Scenario.default()
    res = {}

    def run():
        for p in ("edf", "llf", "milp"):
            res[p] = nb.simulate(scn, policy=p)
        return res

    benchmark.pedantic(run, rounds=1, iterations=1)
    info = {p: {k: r.metrics[k] for k in ("energy_delivered_kwh", "energy_requested_kwh", "max_overload_a", "cost_eur",
                                          "peak_kw", "solve_seconds_median")} for p, r in res.items()}
    short = {p: r.sessions.set_index("session_id")["unmet_kwh"] for p, r in res.items()}
    worse = (short["milp"] - short["edf"])
    info["milp_shorter_than_edf_kwh"] = {str(k): float(v) for k, v in worse[worse > 1e-3].items()}
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("cache", ["cold", "cached"])
def test_first_step_fresh_process(benchmark, tmp_path, cache):
    """The numba cold start: a fresh interpreter imports nowblock and plans one 20-car step.

    ``cold``: an empty numba cache (``NUMBA_CACHE_DIR`` in a new directory), so every kernel
    compiles, as on a machine's first run; ``cached``: the same directory after that run.
    ``extra_info`` holds the first step alone and the interpreter's whole run [s].
    """
    import os
    import subprocess
    import sys

    code = ("import time; t0 = time.perf_counter()\n"
            "from nowblock.milp import MilpPolicy\n"
            "from nowblock.milp.testing import plugged_in_snapshot\n"
            "snap = plugged_in_snapshot(20); t1 = time.perf_counter()\n"
            "MilpPolicy().schedule(snap); t2 = time.perf_counter()\n"
            "print(t1 - t0, t2 - t1)\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    if cache == "cached":
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    runs = []

    def run():
        if cache == "cold":
            env["NUMBA_CACHE_DIR"] = str(tmp_path / f"numba{len(runs)}")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        runs.append((time.perf_counter() - t0, *map(float, out.stdout.split())))

    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update({"cache": cache, "process_s": [r[0] for r in runs], "import_s": [r[1] for r in runs],
                                 "first_step_s": [r[2] for r in runs]})

