"""The optimizer's instance matrix (issue 15): cells, the plain LP floor, an outside feasibility check.

Nothing here uses ``nowblock.milp``'s own model: the LP floor and the check are written from
the public contract (a :class:`nowblock.Site`, a sessions frame, base load and price series), so
a bug in the optimizer's formulation cannot hide in its own yardstick.

- :func:`cells` lists the matrix (``NOWBLOCK_MILP_MATRIX=full`` for all of it, otherwise a
  representative sub-grid);
- :func:`lp_floor` builds and solves the LP relaxation of the same cars in plain highspy:
  currents continuous in [0, max] while plugged in, every fuse phase of every slot (the root less
  the base load's largest value in the slot), the unbalance rows if the site has them, energy
  rows with a shortfall slack priced at 20 EUR/kWh and no car above its need, and the energy
  price;
- :func:`check_schedule` checks a returned plan against every fuse, phase and slot, the
  unbalance limit (also with what cars really draw: a full car on the light phase draws
  nothing), "0 or at least the minimum", the maximum, the pilot step and the plug-in
  window, and returns the energy it delivers.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from nowblock.milp.testing import MatrixCell

CARS = (50, 200, 1000, 2000)
FUSE_SHARES = (0.15, 0.35, 0.70)
STEPS = ("15min", "5min")
PHASE_NAMES = ("L1", "L2", "L3")
SHORTFALL_EUR_PER_KWH = 20.0


def cells(full: bool | None = None) -> list[MatrixCell]:
    """The matrix: every combination of cars, fuse share, flat/tree, step, base load and prices,
    unbalance limit (``full``; 192 cells), or a representative sub-grid (default): every size
    and fuse share on both site shapes at 15 minutes, and the 5-minute step, base load with
    prices, and the unbalance limit each varied on the 200- and 1,000-car congested cells.
    ``full=None`` reads ``NOWBLOCK_MILP_MATRIX`` (``full`` or ``sub``).
    ``NOWBLOCK_MILP_MATRIX_CARS`` (e.g. ``50,200``) keeps only those block sizes of the full
    matrix (a re-run of the cells a change can move)."""
    if full is None:
        full = os.environ.get("NOWBLOCK_MILP_MATRIX", "sub").lower() == "full"
    if full:
        sizes = [x.strip() for x in os.environ.get("NOWBLOCK_MILP_MATRIX_CARS", "").split(",") if x.strip()]
        bad = [x for x in sizes if not x.isdigit() or int(x) not in CARS]
        if bad:
            raise ValueError(f"NOWBLOCK_MILP_MATRIX_CARS: {bad} not among the matrix's sizes {CARS}")
        cars = tuple(int(x) for x in sizes) or CARS
        return [MatrixCell(n, s, tree, step, load, unb)
                for n, s, tree, step, load, unb in itertools.product(cars, FUSE_SHARES, (False, True), STEPS,
                                                                      (False, True), (False, True))]
    out = [MatrixCell(n, s, tree) for n in CARS for s in FUSE_SHARES for tree in (False, True)]
    for n in (200, 1000):
        for tree in (False, True):
            out += [MatrixCell(n, 0.35, tree, "5min"), MatrixCell(n, 0.35, tree, load_and_prices=True),
                    MatrixCell(n, 0.35, tree, unbalance=True),
                    MatrixCell(n, 0.15, tree, "5min", load_and_prices=True, unbalance=True)]
    return out


# ---- the block as plain arrays, from the public contract -----------------------------------
def _slot_grid(start, step: str, horizon: str = "24h") -> tuple[pd.DatetimeIndex, float]:
    step_td = pd.Timedelta(step)
    n = int(pd.Timedelta(horizon) / step_td)
    return pd.date_range(pd.Timestamp(start).tz_convert("UTC"), periods=n, freq=step_td), step_td / pd.Timedelta("1h")


def _fuse_phase_matrix(site, cp_ids, car_phases) -> np.ndarray:
    """(fuses*3, cars): 1 where the car's current flows through the fuse's grid phase; written
    from the site's fuse tree and the charging points' rotations, not from the optimizer."""
    fuse_pos = {f.id: i for i, f in enumerate(site.fuses)}
    parent = {f.id: f.parent for f in site.fuses}
    cps = {c.id: c for c in site.charge_points}
    m = np.zeros((3 * len(site.fuses), len(cp_ids)))
    for j, (cid, k) in enumerate(zip(cp_ids, car_phases)):
        cp = cps[cid]
        rot = cp.phase_rotation
        grid = [PHASE_NAMES.index(rot[2 * q: 2 * q + 2]) for q in range(min(int(k), cp.phases))]
        f = cp.fuse
        while f is not None:
            for p in grid:
                m[3 * fuse_pos[f] + p, j] = 1.0
            f = parent[f]
    return m


def _series_on_slots(series, times, dt_h, how):
    """A step-wise series' mean or max over each slot (sampled every minute)."""
    if series is None:
        return np.zeros(len(times))
    s = series.copy()
    s.index = pd.DatetimeIndex(s.index).tz_convert("UTC")
    fine = pd.date_range(times[0], times[-1] + pd.Timedelta(hours=dt_h), freq="1min", inclusive="left")
    v = s.reindex(s.index.union(fine)).ffill().bfill().reindex(fine).to_numpy(float)
    per = int(round(dt_h * 60))
    v = v.reshape(len(times), per)
    return v.max(axis=1) if how == "max" else v.mean(axis=1)


def block_arrays(block: dict, step: str) -> dict:
    """Per car and slot what the contract says: plugged fraction, upper bound [A], energy per
    ampere [kWh/A], need [kWh]; per fuse-phase row and slot the room [A]."""
    site, s = block["site"], block["sessions"]
    times, dt_h = _slot_grid(block["start"], step)
    t0 = times.asi8 / 3.6e12 if times.unit == "ns" else times.as_unit("ns").asi8 / 3.6e12
    arr = pd.DatetimeIndex(s["arrival"]).tz_convert("UTC").as_unit("ns").asi8[:, None] / 3.6e12
    dep = pd.DatetimeIndex(s["departure"]).tz_convert("UTC").as_unit("ns").asi8[:, None] / 3.6e12
    plugged = np.clip((np.minimum(dep, t0[None, :] + dt_h) - np.maximum(arr, t0[None, :])) / dt_h, 0.0, 1.0)
    cps = {c.id: c for c in site.charge_points}
    cp = [cps[c] for c in s["charge_point_id"]]
    phases = np.minimum(s["phases"].to_numpy(int), [c.phases for c in cp])
    car_max = s["max_current_a"].to_numpy(float) if "max_current_a" in s else np.full(len(s), np.inf)
    upper = np.minimum(np.array([c.max_current_a for c in cp]), car_max)
    min_a = np.array([c.min_current_a for c in cp])
    kwh_per_a = (phases * site.voltage_v / 1000.0 * dt_h)[:, None] * plugged
    g = _fuse_phase_matrix(site, s["charge_point_id"], phases)
    limits = np.array([f.max_current_a for f in site.fuses], dtype=float).reshape(-1)
    base_kw = _series_on_slots(block.get("base_load"), times, dt_h, "max")
    room = np.repeat(limits[:, None], len(times), axis=1)
    room[0:3] -= base_kw[None, :] * 1000.0 / (3 * site.voltage_v)
    prices = _series_on_slots(block.get("prices"), times, dt_h, "mean")
    return {"times": times, "dt_h": dt_h, "plugged": plugged, "upper": upper, "min_a": min_a, "phases": phases,
            "kwh_per_a": kwh_per_a, "need": s["energy_kwh"].to_numpy(float), "g": g, "room": room,
            "prices": prices, "unbalance_a": site.max_unbalance_a, "ids": s["session_id"].to_numpy(str)}


def fuse_rows(a: dict, car: np.ndarray, slot: np.ndarray, width: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every fuse phase of every slot as rows ``r * T + t`` over the cells (``car``, ``slot``)
    of :func:`block_arrays`' ``a``, whose offers [A] are the first ``len(car)`` of ``width``
    columns; returns the rows and their upper bounds (the room [A])."""
    n, T = a["plugged"].shape
    gr, gc = np.nonzero(a["g"])
    by_car = np.argsort(car, kind="stable")
    first = np.searchsorted(car[by_car], np.arange(n + 1))
    rows, cols = [], []
    for r, c in zip(gr, gc):  # every (fuse phase, car) nonzero: every cell of the car
        ks = by_car[first[c]:first[c + 1]]
        rows.append(r * T + slot[ks])
        cols.append(ks)
    rows = np.concatenate(rows) if rows else np.zeros(0, int)
    cols = np.concatenate(cols) if cols else np.zeros(0, int)
    R = a["g"].shape[0]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(R * T, width)), a["room"].reshape(-1)


def drawn_kwh(a: dict, x: np.ndarray) -> np.ndarray:
    """(n, T) energy [kWh] each car draws under offers ``x`` [A] (rows as :func:`block_arrays`'
    ``a``): what it is offered until it has its need, in slot order, then only the rest."""
    e = x * a["kwh_per_a"]
    rest = np.maximum(a["need"][:, None] - (np.cumsum(e, axis=1) - e), 0.0)
    return np.minimum(e, rest)


def phase_differences(a: dict) -> list[np.ndarray]:
    """Per car, its share of the grid connection's phase p minus phase q, for the six ordered
    pairs (p, q) of the unbalance rows (1, 0 or -1 a car)."""
    root = a["g"][0:3]
    return [root[p] - root[q] for p, q in itertools.permutations(range(3), 2)]


def lp_floor(block: dict, step: str) -> dict:
    """Build and solve the plain LP relaxation of the block's cars (see the module docstring).
    Returns ``build_s``, ``solve_s``, ``seconds`` (both), ``objective`` [EUR], ``energy_kwh``
    delivered and ``need_kwh``."""
    import highspy

    t0 = time.perf_counter()
    a = block_arrays(block, step)
    n, T = a["plugged"].shape
    car, slot = np.nonzero(a["plugged"] > 0)
    K = len(car)
    e = a["kwh_per_a"][car, slot]
    # columns: x (K), shortfall (n)
    cost = np.concatenate([a["prices"][slot] * e, np.full(n, SHORTFALL_EUR_PER_KWH)])
    col_lo = np.zeros(K + n)
    col_hi = np.concatenate([a["upper"][car], a["need"]])
    blocks, lo, hi = [], [], []
    # energy rows
    blocks.append(sp.hstack([sp.csr_matrix((e, (car, np.arange(K))), shape=(n, K)), sp.identity(n, format="csr")]))
    lo.append(a["need"])
    hi.append(np.full(n, np.inf))
    # ... and no car takes more than it needs: a full car stops drawing, so current beyond its
    # need cannot balance the phases (without this row the LP "delivered" 3 % more under an
    # unbalance limit, by offering full cars on the light phase current they would never draw).
    blocks.append(sp.hstack([sp.csr_matrix((e, (car, np.arange(K))), shape=(n, K)), sp.csr_matrix((n, n))]))
    lo.append(np.full(n, -np.inf))
    hi.append(a["need"])
    fuse, room = fuse_rows(a, car, slot, K + n)
    blocks.append(fuse)
    lo.append(np.full(len(room), -np.inf))
    hi.append(room)
    if a["unbalance_a"] is not None:
        for d in phase_differences(a):
            ks = np.nonzero(d[car] != 0)[0]
            blocks.append(sp.csr_matrix((d[car[ks]], (slot[ks], ks)), shape=(T, K + n)))
            lo.append(np.full(T, -np.inf))
            hi.append(np.full(T, float(a["unbalance_a"])))
    A = sp.vstack(blocks).tocsc()
    row_lo, row_hi = np.concatenate(lo), np.concatenate(hi)
    h = highspy.Highs()
    h.silent()
    h.passModel(A.shape[1], A.shape[0], A.nnz, int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMinimize),
                0.0, cost, col_lo, col_hi, row_lo, row_hi, A.indptr.astype(np.int32), A.indices.astype(np.int32),
                A.data, np.zeros(A.shape[1], dtype=np.int32))
    t1 = time.perf_counter()
    h.run()
    t2 = time.perf_counter()
    status = h.modelStatusToString(h.getModelStatus())
    x = np.asarray(h.getSolution().col_value)[:K]
    per_car = np.bincount(car, weights=e * x, minlength=n)
    # Energy beyond a car's need is free in this LP and useless to the car: count up to the need.
    return {"build_s": t1 - t0, "solve_s": t2 - t1, "seconds": t2 - t0, "status": status,
            "objective": float(h.getInfo().objective_function_value),
            "energy_kwh": float(np.minimum(per_car, a["need"]).sum()), "need_kwh": float(a["need"].sum())}


def check_schedule(block: dict, step: str, current_a: pd.DataFrame, step_a: float = 1.0, tol: float = 1e-6) -> dict:
    """Every rule a returned plan must keep, checked from the contract: returns ``ok``, a list
    of ``violations`` (the first few), ``energy_kwh`` delivered, ``short_cars`` (cars below
    their need by more than 1 Wh), ``peak_load_share`` (highest fuse-phase load over its room) and
    ``unbalance_share`` (the widest phase spread of the root over the unbalance limit)."""
    a = block_arrays(block, step)
    ids = a["ids"]
    x = current_a.reindex(index=a["times"], columns=ids).fillna(0.0).to_numpy(float).T  # (n, T)
    bad = []
    if (x < -tol).any():
        bad.append("negative current")
    on = x > tol
    if (on & (x < a["min_a"][:, None] - tol)).any():
        bad.append(f"{int((on & (x < a['min_a'][:, None] - tol)).sum())} cells between 0 and the minimum")
    if (x > a["upper"][:, None] + tol).any():
        bad.append("above a maximum")
    if (on & (a["plugged"] <= 0)).any():
        bad.append("current while not plugged in")
    off_step = np.abs(x / step_a - np.round(x / step_a)) > 1e-6
    if off_step.any():
        bad.append(f"{int(off_step.sum())} cells off the {step_a} A pilot step")
    load = a["g"] @ x  # (rows, T)
    over = load > a["room"] + tol
    if over.any():
        r, t = np.nonzero(over)
        bad.append(f"{len(r)} fuse-phase-slot rows overloaded, worst {float((load - a['room'])[over].max()):.3f} A")
    unbalance_share = 0.0
    if a["unbalance_a"] is not None:
        root = load[0:3]
        spread = root.max(axis=0) - root.min(axis=0)
        if (spread > a["unbalance_a"] + tol).any():
            bad.append("unbalance limit broken")
        unbalance_share = float(spread.max(initial=0.0) / max(a["unbalance_a"], 1e-9))
        # ... and with what cars really draw: a car stops once it has its energy, so on the light
        # phase only its draw until full counts (in time order); on the heavy phase its offer.
        k = a["kwh_per_a"]
        drawn = np.where(k > 0, drawn_kwh(a, x) / np.where(k > 0, k, 1.0), x)
        g = a["g"][0:3]
        for p, q in itertools.permutations(range(3), 2):
            d = g[p] - g[q]
            lhs = np.clip(d, 0, None) @ x + np.clip(d, None, 0) @ drawn
            if (lhs > a["unbalance_a"] + tol).any():
                bad.append(f"unbalance limit broken with real draws (L{p + 1}-L{q + 1}, worst "
                           f"{float(lhs.max()):.2f} A)")
                break
    energy = (x * a["kwh_per_a"]).sum(axis=1)
    room = np.where(a["room"] > 0, a["room"], np.nan)
    return {"ok": not bad, "violations": bad, "energy_kwh": float(np.minimum(energy, a["need"]).sum()),
            "short_cars": int((energy < a["need"] - 1e-3).sum()),
            "peak_load_share": float(np.nanmax(load / room)) if load.size else 0.0,
            "unbalance_share": unbalance_share}


# ---- the table for docs/bench_optimize.md ---------------------------------------------------------
def table(rows: list[dict]) -> str:
    """A markdown table of matrix results (``extra_info`` of ``bench_milp_matrix.py``), one row a
    cell, and the worst cells above it."""
    rows = sorted(rows, key=lambda r: (r["n_cars"], r["tree"], r["fuse_share"], r["step"], r["load_and_prices"],
                                       r["unbalance"]))
    out = ["| cell | call [s] | LP floor [s] | ratio | gap | status / method | peak MB | check | energy vs LP |"
           " short cars | limited: s / limit, returned |",
           "|---|---:|---:|---:|---:|---|---:|---|---:|---:|---|"]
    for r in rows:
        out.append(
            f"| {r['cell']} | {r['call_s']:.3f} | {r['floor_s']:.3f} | {r['ratio']:.1f} | {_pct(r['gap'])} | "
            f"{r['status']} / {r['method']} | {r['peak_mb']:.0f} | {'ok' if r['ok'] else 'FAIL'} | "
            f"{100 * r['energy_share']:.2f} % | {r['short_cars']} | {r['limited_s']:.2f} / {r['limited_limit_s']:.2f},"
            f" {r['limited_status']} {r['limited_method']} {_pct(r['limited_gap'])} |")
    return "\n".join(out)


def worst(rows: list[dict]) -> str:
    """The headline: the worst cell for each target."""
    def pick(key, rs, best=max):
        rs = [r for r in rs if np.isfinite(r[key])]
        return best(rs, key=lambda r: r[key]) if rs else None

    lines = []
    up_to_1000 = [r for r in rows if r["n_cars"] <= 1000]
    for title, key, rs, fn in (("ratio call / LP floor (<= 1,000 cars)", "ratio", up_to_1000, max),
                               ("MIP gap (<= 1,000 cars)", "gap", up_to_1000, max),
                               ("call at 200 cars", "call_s", [r for r in rows if r["n_cars"] == 200], max),
                               ("call at 1,000 cars", "call_s", [r for r in rows if r["n_cars"] == 1000], max),
                               ("call at 2,000 cars", "call_s", [r for r in rows if r["n_cars"] == 2000], max),
                               ("energy vs the LP's", "energy_share", rows, min),
                               ("time-limited call / its limit", "limited_over", rows, max)):
        r = pick(key, rs, fn)
        if r is not None:
            v = r[key]
            shown = _pct(v) if key == "gap" else (f"{100 * v:.2f} %" if key == "energy_share" else f"{v:.3g}")
            lines.append(f"- {title}: **{shown}** ({r['cell']})")
    counts = (("cells above 15 x the LP floor (<= 1,000 cars)", [r for r in up_to_1000 if r["ratio"] > 15]),
              ("cells with a MIP gap above 1 % (<= 1,000 cars)", [r for r in up_to_1000 if not r["gap"] <= 0.01]),
              ("200-car cells above 1 s", [r for r in rows if r["n_cars"] == 200 and r["call_s"] > 1.0]),
              ("1,000-car cells above 5 s", [r for r in rows if r["n_cars"] == 1000 and r["call_s"] > 5.0]),
              ("2,000-car cells above 60 s", [r for r in rows if r["n_cars"] == 2000 and r["call_s"] > 60.0]),
              ("time-limited calls above their limit + 10 %", [r for r in rows if r["limited_over"] > 1.1]),
              ("cells below 99.5 % of the LP's energy", [r for r in rows if r["energy_share"] < 0.995]))
    for title, rs in counts:
        lines.append(f"- {title}: **{len(rs)}** of the cells run" + (f" ({', '.join(r['cell'] for r in rs)})"
                                                                     if 0 < len(rs) <= 8 else ""))
    n_bad = sum(not r["ok"] or not r.get("limited_ok", True) for r in rows)
    lines.append(f"- plans that break a limit (checked outside the optimizer): **{n_bad}** of {len(rows)}")
    free = [r for r in rows if r["short_cars"] and r["peak_load_share"] < 0.99 and r.get("unbalance_share", 0) < 0.99]
    lines.append(f"- cells where a car ends short while no fuse phase and no unbalance limit is above 99 % of its"
                 f" room: **{len(free)}**" + (f" ({', '.join(r['cell'] for r in free)})" if free else ""))
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "inf" if not np.isfinite(v) else f"{100 * v:.2f} %"


if __name__ == "__main__":
    import json
    import sys

    rows = []  # one or more json files (a matrix run in chunks)
    for path in sys.argv[1:]:
        data = json.load(open(path))
        rows += [b["extra_info"] for b in data["benchmarks"] if "cell" in b["extra_info"]]
    print(worst(rows))
    print()
    print(table(rows))
