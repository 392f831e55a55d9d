"""The time-stepped simulator: a policy against a scenario, one control step at a time.

Each step of length ``step`` (5 minutes by default):

1. Cars whose plug-in window covers the whole step are plugged in: a session is in the
   snapshot for the steps that start at or after its arrival and end at or before its
   departure (arrival rounded up and departure rounded down to the step grid).
2. The simulator builds a :class:`~nowblock.seam.BlockSnapshot`: the plugged-in cars with
   the current each drew in the previous step (the measurement), the energy so far and the
   known needs (or, with ``needs="unknown"``, a needs estimator's guesses); the base load
   [kW] from now over the horizon; prices likewise.
3. The policy answers with setpoints; the call is timed (``solve_seconds_median``).
4. Each car draws ``min(offered, its own maximum) x draw_fraction``, no more than its battery
   accepts (:class:`~nowblock.sim.battery.TaperBattery`) and no more than it still wants.
   Its energy grows by ``drawn current x phases x voltage x step``: the delivered energy is
   the sum of drawn power times time by construction.

Base load within a step. A base load series finer than the step can peak inside it, so the
base load the policy sees for *now* is the **maximum** of the true base load within the
coming step, and the measured fuse currents (and ``max_overload_a``) use that maximum too:
they are the worst moment of the step. With perfect foresight (the default) the rest of the
horizon also uses each step's maximum, so plans stay safe. ``base_load_kw`` in the time
series and the energies use the step's time-weighted mean.

Metrics (all in :attr:`SimulationResult.metrics`):

* ``energy_requested_kwh``, ``energy_delivered_kwh``, ``demand_met`` (delivered / requested,
  1 when nothing was requested), ``unmet_kwh``.
* ``peak_kw``: the highest step-mean block power (base load plus charging) [kW].
* ``max_overload_a``: the worst excess [A] of any fuse phase over
  ``max(rating, base-load-only current)``, from simulated draws plus the base load's maximum
  within each step. A base load that alone exceeds the grid connection is not blamed on
  charging; charging on top of it is.
* ``max_unbalance_excess_a``: the worst excess [A] of the grid connection's measured charging
  current unbalance (most minus least loaded phase) over ``site.max_unbalance_a``. Policies
  bound the unbalance of what they *offer* (``offered_L1_a`` ... in the time series: the
  grid connection's charging current if every car drew its offer); a single-phase car that
  draws less than offered can still unbalance the measured load, which this metric reports.
* ``cost_eur``: charging energy times the price of its step (step-mean price) [EUR]; 0 when the
  scenario has no prices. The base load's cost is the same for every policy and left out.
* ``solve_seconds_median``: median wall time of ``policy.schedule`` over steps with cars (a
  policy with ``warm_up()``, like the MILP's numba kernels, is warmed up first; ``wall_seconds``
  includes that).
* extras: ``n_sessions``, ``n_steps``, ``car_hours``, ``min_fraction_delivered``,
  ``sessions_fully_met``, ``overload_steps``, ``solve_seconds_max``,
  ``wall_seconds``, ``policy``.
"""

from __future__ import annotations

import math
import sys
import time as _time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nowblock.loop.needs import FallbackNeedsEstimator
from nowblock.seam import BlockSnapshot, Policy, root_index
from nowblock.sim.battery import TaperBattery
from nowblock.block.site import PHASES

_DONE_KWH = 1e-9


@dataclass
class SimulationResult:
    """What a simulation produced.

    ``metrics`` (see the module docstring), ``timeseries`` (one row a step, indexed by the
    step's start time, UTC), ``sessions`` (one row a simulated session: requested and
    delivered energy [kWh], fraction delivered), ``draws`` (long format: time, session_id,
    current_a, power_kw for every step a car drew), ``solve_seconds`` (one entry per policy
    call).
    """

    metrics: dict
    timeseries: pd.DataFrame
    sessions: pd.DataFrame
    draws: pd.DataFrame
    solve_seconds: np.ndarray
    policy: str
    step: pd.Timedelta
    site: object = field(repr=False, default=None)

    def to_dir(self, path, *, plot: bool = True, title: str | None = None):
        """Write ``timeseries.csv`` (local time), ``sessions.csv``, ``metrics.json`` and, with
        ``plot``, ``load.png`` into folder ``path`` (created if needed); returns the file paths."""
        import json
        from pathlib import Path

        from nowblock.sim.plot import local_timeseries

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        ts = local_timeseries(self.timeseries, self.site.timezone) if self.site is not None else self.timeseries
        files = [out / "timeseries.csv", out / "sessions.csv", out / "metrics.json"]
        ts.to_csv(files[0], index_label="time", date_format="%Y-%m-%dT%H:%M:%S%z")
        self.sessions.to_csv(files[1], index=False)
        files[2].write_text(json.dumps(self.metrics, indent=2) + "\n")
        if plot:
            files.append(out / "load.png")
            self.plot(files[-1], title=title)
        return files

    def plot(self, path=None, *, title: str | None = None):
        """The grid connection's load per phase against its limit (see :func:`nowblock.plot.plot_load`),
        in the site's local time; written as PNG to ``path`` if given. Returns the Figure."""
        from nowblock.sim.plot import local_timeseries, plot_load

        ts = local_timeseries(self.timeseries, self.site.timezone) if self.site is not None else self.timeseries
        grid = self.site.root.id if self.site is not None else None
        return plot_load(ts, grid_fuse=grid, path=path, title=title or f"policy {self.policy}")


def _step_stats(series: pd.Series | None, start: pd.Timestamp, step: pd.Timedelta, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted mean and maximum of a step-function series over ``n`` steps from ``start``.

    A sample at time t holds until the next sample; before the first sample the first value
    holds, after the last the last. Returns two arrays of length ``n``.
    """
    if series is None or len(series) == 0:
        return np.zeros(n), np.zeros(n)
    t = series.index.as_unit("ns").asi8.astype(np.int64)
    v = series.to_numpy(float)
    s0, st = int(pd.Timestamp(start).as_unit("ns").value), int(step.value)
    edges = s0 + st * np.arange(n + 1, dtype=np.int64)
    pos = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 1)
    mx = v[pos[:-1]].copy()
    k = np.searchsorted(edges, t, side="right") - 1
    inner = (k >= 0) & (k < n) & (t > edges[np.clip(k, 0, n)])
    np.maximum.at(mx, k[inner], v[inner])
    # Cumulative integral of the step function at the samples, then at the edges.
    cum = np.concatenate([[0.0], np.cumsum(v[:-1] * np.diff(t).astype(float))])
    f_edges = cum[pos] + v[pos] * (edges - t[pos]).astype(float)
    mean = np.diff(f_edges) / float(st)
    return mean, mx


#: Progress appears only on runs longer than this [s], then at most once per this interval.
PROGRESS_EVERY_S = 1.0


def _progress_printer(enabled: bool, total: int, label: str):
    """A callable(k) that prints ``label`` progress to stderr on long runs."""
    if not enabled:
        return lambda k: None
    t0 = _time.perf_counter()
    last = [t0]

    def show(k: int) -> None:
        now = _time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S or (k == total and now - t0 >= PROGRESS_EVERY_S):
            last[0] = now
            pct = 100.0 * k / max(total, 1)
            eta = (now - t0) / max(k, 1) * (total - k)
            sys.stderr.write(f"\r{label}: {pct:5.1f}% ({k}/{total} steps, {eta:5.0f} s left)")
            if k == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return show


def simulate(
    scenario,
    policy: str | Policy = "equal",
    *,
    step="5min",
    horizon="24h",
    start=None,
    end=None,
    needs: str = "known",
    needs_estimator=None,
    base_load_forecaster=None,
    current_step_a: float = 1.0,
    battery: TaperBattery | None = None,
    progress: bool = False,
    policy_options: dict | None = None,
) -> SimulationResult:
    """Run ``policy`` against ``scenario`` and measure it.

    Parameters
    ----------
    scenario : nowblock.Scenario
        Site, sessions, base load [kW] and prices [EUR/kWh].
    policy : str or Policy
        A name for :func:`nowblock.policies.get_policy` or a policy object.
    step, horizon : str or Timedelta
        Control step and how far ahead base load and prices reach in each snapshot.
    start, end : timestamp, optional
        Simulated window (UTC if naive); by default from the first arrival to the last
        departure, on the step grid. Sessions overlapping the window take part (a car
        already plugged in at ``start`` arrives empty-handed then); their whole request
        counts in ``energy_requested_kwh``.
    needs : "known" or "unknown"
        Whether the policy sees the sessions' real departure and energy, or estimates from
        ``needs_estimator.predict_needs(cars, time)`` (a DataFrame by session_id with
        ``departure`` and ``energy_kwh``); :class:`FallbackNeedsEstimator` if None.
    base_load_forecaster : object, optional
        ``predict(history, now, horizon) -> Series`` [kW]; None means perfect foresight. The
        value for now is always the true maximum within the coming step.
    current_step_a : float
        Pilot-signal granularity [A] passed to the policy.
    battery : TaperBattery, optional
        The cars' battery model.
    progress : bool
        Print progress to stderr on long runs.
    policy_options : dict, optional
        Keyword arguments for :func:`~nowblock.policies.get_policy` when ``policy`` is a name
        (for example the MILP's options).
    """
    from nowblock.policies import get_policy

    wall0 = _time.perf_counter()
    pol = get_policy(policy, **(policy_options or {})) if isinstance(policy, str) else policy
    if hasattr(pol, "reset"):
        pol.reset()
    warm_up = getattr(pol, "warm_up", None)
    if callable(warm_up):  # compile before the clock runs: solve_seconds time planning, not numba
        warm_up()
    if needs not in ("known", "unknown"):
        raise ValueError(f"needs: expected 'known' or 'unknown', got {needs!r}")
    if needs == "unknown" and needs_estimator is None:
        needs_estimator = FallbackNeedsEstimator()
    battery = battery or TaperBattery()
    site = scenario.site
    step = pd.Timedelta(step)
    horizon = pd.Timedelta(horizon)
    if step <= pd.Timedelta(0):
        raise ValueError("step must be positive")
    dt_h = step / pd.Timedelta(hours=1)
    n_h = max(1, math.ceil(horizon / step))

    sess = scenario.sessions
    if len(sess) == 0 and (start is None or end is None):
        raise ValueError("simulate: a scenario without sessions needs start and end")
    t_start = _utc(start) if start is not None else sess["arrival"].min().floor(step)
    t_end = _utc(end) if end is not None else sess["departure"].max().ceil(step)
    n_t = max(0, math.ceil((t_end - t_start) / step))
    keep = ((sess["departure"] > t_start) & (sess["arrival"] < t_end)).to_numpy()
    sess = sess.loc[keep].reset_index(drop=True)
    n_s = len(sess)

    # ---- per-session constants (vectorised once) ----
    sid = sess["session_id"].to_numpy(dtype=object)
    cp_ids = sess["charge_point_id"].to_numpy(dtype=object)
    cpi = site.cp_index(cp_ids) if n_s else np.zeros(0, dtype=np.int64)
    ph = np.minimum(sess["phases"].to_numpy(np.int64), site.cp_phases[cpi])
    kw_per_a = ph * site.voltage_v / 1000.0
    car_max = np.minimum(sess["max_current_a"].to_numpy(float), site.cp_max_current_a[cpi])
    cp_min = site.cp_min_current_a[cpi]
    req = sess["energy_kwh"].to_numpy(float)
    draw_frac = sess["draw_fraction"].to_numpy(float)
    prio = sess["priority"].to_numpy(float)
    cap_kwh = battery.capacities_kwh(req)
    soc = battery.start_soc(req, cap_kwh)
    s_ns, st_ns = t_start.as_unit("ns").value, step.as_unit("ns").value
    arr_ns = pd.DatetimeIndex(sess["arrival"]).as_unit("ns").asi8
    dep_ns = pd.DatetimeIndex(sess["departure"]).as_unit("ns").asi8
    k_in = np.maximum(0, -((s_ns - arr_ns) // st_ns))  # ceil((arrival - start) / step)
    k_out = np.minimum(n_t, (dep_ns - s_ns) // st_ns)  # floor((departure - start) / step)
    # DatetimeArray.take is far cheaper per step than fancy-indexing a DatetimeIndex
    arrival_dt = pd.DatetimeIndex(sess["arrival"]).as_unit("ns").array
    departure_dt = pd.DatetimeIndex(sess["departure"]).as_unit("ns").array
    inc = site.phase_incidence(cpi, ph)  # (F*3, n_s)
    n_f = len(site.fuses)
    r0 = root_index(site)

    # ---- time axis, base load, prices ----
    grid = pd.date_range(t_start, periods=n_t + n_h, freq=step, name="time")
    base_mean, base_max = _step_stats(scenario.base_load, t_start, step, n_t + n_h)
    price_mean, _ = _step_stats(scenario.prices, t_start, step, n_t + n_h)
    has_prices = scenario.prices is not None
    caps = site.cap_current_a(grid[:n_t]) if n_t else np.zeros((0, len(site.charge_points)))
    base_hist = scenario.base_load

    # ---- state ----
    delivered = np.zeros(n_s)
    measured = np.full(n_s, np.nan)
    offered = np.zeros(n_s)
    fuse_a = np.zeros((n_t, n_f * 3))
    cars_ph_a = np.zeros((n_t, 3))
    offered_ph_a = np.zeros((n_t, 3))
    charging_kw = np.zeros(n_t)
    offered_sum_a = np.zeros(n_t)
    n_plugged = np.zeros(n_t, dtype=np.int64)
    n_charging = np.zeros(n_t, dtype=np.int64)
    solve_s: list[float] = []
    log_k: list[np.ndarray] = []
    log_s: list[np.ndarray] = []
    log_a: list[np.ndarray] = []
    show = _progress_printer(progress, n_t, f"simulate {pol.name}")
    sid_index = pd.Index(sid, name="session_id", dtype="str")
    cp_str = pd.array(cp_ids, dtype="str")

    for k in range(n_t):
        act = np.nonzero((k_in <= k) & (k_out > k))[0]
        n_plugged[k] = len(act)
        if len(act):
            now = grid[k]
            mx = np.minimum(car_max[act], caps[k, cpi[act]])
            arrays = {
                "cp_index": cpi[act],
                "phases": ph[act],
                "min_current_a": cp_min[act],
                "max_current_a": mx,
                "energy_requested_kwh": req[act],
                "energy_delivered_kwh": delivered[act],
                "measured_current_a": measured[act],
                "offered_current_a": offered[act],
                "priority": prio[act],
                "arrival": arr_ns[act],
                "departure": dep_ns[act],
            }
            cars = pd.DataFrame(
                {
                    "charge_point_id": cp_str.take(act),
                    **arrays,
                    "arrival": arrival_dt.take(act),
                    "departure": departure_dt.take(act),  # after the int64 copies in ``arrays``
                    "needs_known": np.ones(len(act), dtype=bool),
                },
                index=sid_index.take(act),
                copy=False,
            )
            if needs == "unknown":
                cars = _estimate_needs(cars, now, needs_estimator)
                del arrays["energy_requested_kwh"], arrays["departure"]
            ahead = grid[k : k + n_h]
            base_kw = base_max[k : k + n_h]
            if base_load_forecaster is not None:
                base_kw = _forecast_base(base_load_forecaster, base_hist, now, step, horizon, n_h, base_max[k])
            snap = BlockSnapshot(
                time=now,
                site=site,
                step=step,
                cars=cars,
                base_load_kw=pd.Series(base_kw, index=ahead, name="kw"),
                prices_eur_per_kwh=pd.Series(price_mean[k : k + n_h], index=ahead, name="eur_per_kwh")
                if has_prices
                else None,
                current_step_a=current_step_a,
                incidence_a=inc[:, act],
                car_arrays=arrays,
            )
            t0 = _time.perf_counter()
            answer = pol.schedule(snap)
            solve_s.append(_time.perf_counter() - t0)
            x = _as_setpoints(answer, cars.index)
            # ---- the cars draw ----
            ceiling = np.minimum(x, car_max[act]) * draw_frac[act]
            accept = battery.accepted_current_a(soc[act], car_max[act])
            drawn = np.minimum(ceiling, accept)
            remaining = np.maximum(req[act] - delivered[act], 0.0)
            per_a_kwh = kw_per_a[act] * dt_h
            e = np.minimum(drawn * per_a_kwh, remaining)
            e[remaining <= _DONE_KWH] = 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                drawn = np.where(per_a_kwh > 0, e / per_a_kwh, 0.0)
            delivered[act] += e
            soc[act] += e / cap_kwh[act]
            measured[act] = drawn
            offered[act] = x
            fuse_a[k] = inc[:, act] @ drawn
            cars_ph_a[k] = fuse_a[k, 3 * r0 : 3 * r0 + 3]
            offered_ph_a[k] = inc[3 * r0 : 3 * r0 + 3, act] @ np.minimum(x, car_max[act])
            charging_kw[k] = float(e.sum() / dt_h)
            offered_sum_a[k] = float(x.sum())
            on = drawn > 0
            n_charging[k] = int(on.sum())
            if on.any():
                log_k.append(np.full(int(on.sum()), k))
                log_s.append(act[on])
                log_a.append(drawn[on])
        show(k + 1)

    # ---- results ----
    base_a_max = site.base_load_phase_current_a(base_max[:n_t])  # (n_t, 3)
    base_a_mean = site.base_load_phase_current_a(base_mean[:n_t])
    fuse_a[:, 3 * r0 : 3 * r0 + 3] += base_a_max
    limits = site.limits_a.reshape(-1)
    allowed = np.tile(limits, (n_t, 1))
    allowed[:, 3 * r0 : 3 * r0 + 3] = np.maximum(allowed[:, 3 * r0 : 3 * r0 + 3], base_a_max)
    excess = fuse_a - allowed
    max_overload = float(max(0.0, excess.max())) if n_t else 0.0
    unbalance = cars_ph_a.max(axis=1) - cars_ph_a.min(axis=1) if n_t else np.zeros(0)
    unb_excess = (
        float(max(0.0, (unbalance - site.max_unbalance_a).max())) if (n_t and site.max_unbalance_a is not None) else 0.0
    )

    ts = {
        "base_load_kw": base_mean[:n_t],
        "base_load_max_kw": base_max[:n_t],
        "charging_kw": charging_kw,
        "block_kw": base_mean[:n_t] + charging_kw,
        "price_eur_per_kwh": price_mean[:n_t] if has_prices else np.full(n_t, np.nan),
        "n_plugged": n_plugged,
        "n_charging": n_charging,
        "offered_a": offered_sum_a,
    }
    for p in range(3):
        ts[f"households_{PHASES[p]}_a"] = base_a_mean[:, p]
        ts[f"cars_{PHASES[p]}_a"] = cars_ph_a[:, p]
        ts[f"offered_{PHASES[p]}_a"] = offered_ph_a[:, p]
    for f, fid in enumerate(site.fuse_ids):
        for p in range(3):
            ts[f"{fid}_{PHASES[p]}_a"] = fuse_a[:, 3 * f + p]
            ts[f"{fid}_{PHASES[p]}_limit_a"] = np.full(n_t, limits[3 * f + p])
    timeseries = pd.DataFrame(ts, index=grid[:n_t])

    frac = np.where(req > 0, delivered / np.where(req > 0, req, 1.0), 1.0)
    sessions = pd.DataFrame(
        {
            "session_id": sid,
            "charge_point_id": cp_ids,
            "arrival": sess["arrival"],
            "departure": sess["departure"],
            "energy_requested_kwh": req,
            "energy_delivered_kwh": delivered,
            "fraction_delivered": frac,
            "unmet_kwh": np.maximum(req - delivered, 0.0),
            "steps_plugged": np.maximum(k_out - k_in, 0),
        }
    )
    if log_k:
        kk, ss, aa = np.concatenate(log_k), np.concatenate(log_s), np.concatenate(log_a)
    else:
        kk, ss, aa = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    draws = pd.DataFrame(
        {"time": grid[kk], "session_id": sid[ss], "current_a": aa, "power_kw": aa * kw_per_a[ss]}
    )

    e_req, e_del = float(req.sum()), float(delivered.sum())
    solve = np.asarray(solve_s)
    metrics = {
        "energy_requested_kwh": e_req,
        "energy_delivered_kwh": e_del,
        "demand_met": e_del / e_req if e_req > 0 else 1.0,
        "peak_kw": float(timeseries["block_kw"].max()) if n_t else 0.0,
        "max_overload_a": max_overload,
        "cost_eur": float(np.sum(charging_kw * dt_h * np.nan_to_num(price_mean[:n_t]))) if has_prices else 0.0,
        "solve_seconds_median": float(np.median(solve)) if len(solve) else 0.0,
        "unmet_kwh": float(np.maximum(req - delivered, 0.0).sum()),
        "n_sessions": int(n_s),
        "sessions_fully_met": float(np.mean(frac >= 1.0 - 1e-6)) if n_s else 1.0,
        "min_fraction_delivered": float(frac.min()) if n_s else 1.0,
        "overload_steps": int((excess > 1e-6).any(axis=1).sum()) if n_t else 0,
        "max_unbalance_excess_a": unb_excess,
        "n_steps": int(n_t),
        "car_hours": float(n_plugged.sum() * dt_h),
        "solve_seconds_max": float(solve.max()) if len(solve) else 0.0,
        "wall_seconds": _time.perf_counter() - wall0,
        "policy": pol.name,
    }
    return SimulationResult(metrics, timeseries, sessions, draws, solve, pol.name, step, site)


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


def _as_setpoints(answer, index: pd.Index) -> np.ndarray:
    """A policy's answer as non-negative setpoints [A] in the order of ``index``."""
    if isinstance(answer, pd.Series):
        x = answer.to_numpy(float) if answer.index.equals(index) else answer.reindex(index).to_numpy(float)
    else:
        x = np.asarray(answer, dtype=float).reshape(-1)
        if len(x) != len(index):
            raise ValueError(f"policy answered {len(x)} setpoints for {len(index)} cars")
    return np.maximum(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), 0.0)


def _estimate_needs(cars: pd.DataFrame, now: pd.Timestamp, estimator) -> pd.DataFrame:
    """Replace the cars' departure and energy with an estimator's guesses (needs_known False)."""
    blind = cars.assign(
        departure=pd.Series(pd.NaT, index=cars.index, dtype=cars["departure"].dtype),
        energy_requested_kwh=np.nan,
        needs_known=False,
    )
    est = estimator.predict_needs(blind, now)
    if not est.index.equals(cars.index):
        est = est.reindex(cars.index)
    dep = pd.to_datetime(est["departure"], utc=True)
    energy = pd.to_numeric(est["energy_kwh"], errors="coerce")
    if dep.isna().any() or energy.isna().any():  # the estimator left gaps: fill them simply
        fb = FallbackNeedsEstimator().predict_needs(blind, now)
        dep = dep.fillna(fb["departure"])
        energy = energy.fillna(fb["energy_kwh"])
    return blind.assign(departure=dep.to_numpy(), energy_requested_kwh=energy.to_numpy(float))


def _forecast_base(forecaster, history, now, step, horizon, n_h, now_max_kw) -> np.ndarray:
    """Forecast base load [kW] on the step grid; the first value is the true maximum of now.

    The forecaster sees the readings before ``now`` only. Each step takes the forecast's
    maximum within it; an empty forecast (nothing to forecast from) keeps the current load.
    """
    hist = history.iloc[: history.index.searchsorted(now)] if history is not None else pd.Series(dtype=float, name="kw")
    fc = forecaster.predict(hist, now, horizon)
    fc = pd.Series(fc, dtype=float).dropna() if fc is not None else None
    if fc is None or len(fc) == 0:
        mx = np.full(n_h, now_max_kw)
    else:
        _, mx = _step_stats(fc, now, step, n_h)
    mx[0] = now_max_kw
    return mx
