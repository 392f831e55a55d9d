"""Adapters between the contract's data and the formulation, both ways.

- :func:`from_sessions`: a sessions frame (every need known) -> :class:`Formulation`;
- :func:`from_snapshot`: a policy's :class:`~nowblock.seam.BlockSnapshot` (remaining needs,
  forecast load, measured draw) -> :class:`Formulation`;
- :func:`slot_snapshot`: one slot of a formulation -> a :class:`~nowblock.seam.BlockSnapshot`,
  for the shared safety net and the baseline heuristics.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from nowblock.block.site import Site
from nowblock.milp.formulation import Formulation, KernelArrays
from nowblock.milp.options import OptimizeOptions
from nowblock.milp.slots import SlotTicks, nan_to, on_slots, plugged_fraction, slot_ticks
from nowblock.seam import BlockSnapshot

_TOL_A = 1e-6


def _upper(site: Site, times, cp_index, car_max_a, plugged, slot_s=None) -> np.ndarray:
    if not site.has_caps:  # no time windows: skip the local-time grid
        cap = np.full((len(cp_index), len(times)), np.inf)
    else:
        cap = site.cap_current_a(times, slot_s)[:, cp_index].T if len(cp_index) else np.zeros((0, len(times)))
    hi = np.minimum(np.minimum(site.cp_max_current_a[cp_index], car_max_a)[:, None], cap)
    return np.where(plugged > 0, hi, 0.0)


def from_sessions(site: Site, sessions: pd.DataFrame, start=None, horizon="24h", step="15min",
                  base_load=None, prices=None, options: OptimizeOptions | None = None,
                  use_draw_fraction: bool = False) -> Formulation:
    """The formulation for a sessions frame (the contract's columns), all needs known in advance.

    Every session overlapping [start, start + horizon) is planned; ``energy_kwh`` [kWh] is its
    whole need. ``start`` defaults to the first arrival floored to ``step``. With
    ``use_draw_fraction`` the decision is the current each car *draws* (offered x
    ``draw_fraction``): min and max are scaled by it (the offline yardstick's perfect foresight).
    """
    from nowblock.block.sessions import validate_sessions

    if options is not None and options.taper_kwh > 0:
        # The taper needs what a snapshot holds (a car's measured draw, the slot sent now); a
        # sessions frame has neither, and the option used to be dropped without a word (rev3 L1).
        warnings.warn("taper_kwh / taper_share apply to the receding-horizon policy (live control and "
                      "simulate), not to a plan of a sessions frame: ignored here", UserWarning, stacklevel=3)
    df = validate_sessions(sessions, site)
    if start is None:
        start = df["arrival"].min().floor(pd.Timedelta(step)) if len(df) else pd.Timestamp.now(tz="UTC").floor(step)
    ticks_ns, dt_h = slot_ticks(start, horizon, step)
    times = SlotTicks(ticks_ns, pd.Timestamp(start).unit).index()
    end = times[-1] + pd.Timedelta(step)
    df = df[(df["departure"] > times[0]) & (df["arrival"] < end)]
    cp = site.cp_index(df["charge_point_id"])
    phases = np.minimum(df["phases"].to_numpy(np.int64), site.cp_phases[cp])
    plugged = plugged_fraction(df["arrival"], df["departure"], times, dt_h)
    n = len(df)
    frac = df["draw_fraction"].to_numpy(float) if use_draw_fraction else np.ones(n)
    car_a = np.minimum(df["max_current_a"].to_numpy(float), site.cp_max_current_a[cp])
    offer_a = np.maximum(car_a, site.cp_min_current_a[cp])
    need = df["energy_kwh"].to_numpy(float)
    min_a = site.cp_min_current_a[cp] * frac
    due = due_by_horizon_end_kwh(site, df["arrival"], df["departure"], end, step, cp, phases, offer_a, min_a,
                                 car_a / offer_a, need, draw_fraction=frac)
    return Formulation(
        site=site, slot_starts=times, dt_h=float(dt_h[0]), session_ids=df["session_id"].to_numpy(str),
        cp_index=cp, phases=phases, min_current_a=min_a,
        draw_ratio=car_a / offer_a,
        upper_a=_upper(site, times, cp, offer_a, plugged, dt_h * 3600.0) * frac[:, None],
        plugged=plugged, need_kwh=need, due_kwh=due,
        priority=df["priority"].to_numpy(float),
        base_kw=on_slots(base_load, ticks_ns, dt_h, 0.0, "max"), price_eur_per_kwh=on_slots(prices, ticks_ns, dt_h, 0.0),
        prev_current_a=np.full(n, np.nan), options=options or OptimizeOptions(),
    )


#: How far past the horizon's end :func:`due_by_horizon_end_kwh` looks [days]: time-window caps
#: repeat daily, so a car that cannot get its need in this long cannot later either.
AFTER_HORIZON_DAYS = 8


def due_by_horizon_end_kwh(site: Site, arrival, departure, end, step, cp_index, phases, offer_a, min_a, draw_ratio,
                           need_kwh, draw_fraction=None) -> np.ndarray | None:
    """Per car the energy [kWh] due by the horizon's end ``end``: its need less the most it could
    get from ``end`` to its departure, at least 0 (all of its need when it leaves by ``end``).

    The most it could get is its largest offer ``offer_a`` [A per phase] (the site's time-window
    caps applied, 0 where below ``min_a`` [A]) on ``step`` slots from ``end`` to its departure,
    as the horizon's own slots count it (:func:`_upper`, :func:`~nowblock.milp.slots.plugged_fraction`),
    times ``phases``, the voltage and ``draw_ratio``; at most :data:`AFTER_HORIZON_DAYS` past
    ``end``, and at most the lowest rating of the fuse phases it loads (:func:`_after_horizon_kwh`).
    Each car counts on its own: the fuses are not shared with the other cars leaving after
    ``end``, nor is the block's other load or the unbalance limit counted (unknown after the
    horizon), so this is the most it could get and the due part the least that is due for it;
    together the cars may be due more (docs/optimizer.md, "Short horizons"). With
    ``draw_fraction`` (per car, ``use_draw_fraction``) the current is the drawn one:
    the capped offer times the fraction (``min_a`` is then a drawn minimum too), as
    :func:`from_sessions` scales the horizon's own upper bounds. Returns None when every car leaves
    by ``end`` (the whole need is due).
    """
    dep = pd.DatetimeIndex(departure).tz_convert("UTC")
    end = pd.Timestamp(end).tz_convert("UTC")
    need = np.maximum(np.nan_to_num(np.asarray(need_kwh, dtype=float)), 0.0)
    late = np.nonzero(np.asarray(dep > end))[0]
    if not len(late):
        return None
    stop = min(dep[late].max(), end + pd.Timedelta(days=AFTER_HORIZON_DAYS))
    ticks_ns, dt_h = slot_ticks(end, max(stop - end, pd.Timedelta(step)), step)
    times = SlotTicks(ticks_ns, end.unit).index()
    arr = pd.DatetimeIndex(arrival).tz_convert("UTC")[late]
    plugged = plugged_fraction(arr, dep[late], times, dt_h)
    hi = _upper(site, times, cp_index[late], offer_a[late], plugged, dt_h * 3600.0)
    if draw_fraction is not None:  # cap the offer first, then scale: min(cap, offer) x fraction
        hi = hi * np.asarray(draw_fraction, dtype=float)[late][:, None]
    kw = phases[late] * site.voltage_v / 1000.0 * draw_ratio[late]
    after_kwh = _after_horizon_kwh(site, cp_index[late], phases[late], hi, plugged * dt_h[None, :], kw, min_a[late])
    due = need.copy()
    due[late] = np.maximum(need[late] - after_kwh, 0.0)
    return due


def _after_horizon_kwh(site: Site, cp_index, phases, hi_a, slot_h, kw_per_a, min_a) -> np.ndarray:
    """Per car the most energy [kWh] it could get after the horizon's end on its own.

    ``hi_a`` (n, T) [A per phase] is each car's largest current per slot after the end (0 where
    not plugged in), ``slot_h`` (n, T) [h] the time it is plugged in of each slot, ``kw_per_a``
    [kW/A] its energy per ampere-hour, ``min_a`` [A] its minimum (below it: 0). Its current is
    at most the lowest rating [A] of the fuse phases it loads (its path to the grid connection,
    its phases). The other cars leaving after the end are not counted: any fixed split of a fuse
    among them (80dad3c took earliest departure first) gives a later car a due part it may not
    have, as the plan can let the earlier car take its share inside the horizon (review rev4 F2).
    """
    n = len(cp_index)
    if not n:
        return np.zeros(0)
    inc = site.phase_incidence(cp_index, phases).astype(bool)  # (fuse phases, n)
    rating = np.where(inc, site.limits_a.reshape(-1, 1), np.inf).min(axis=0)
    cur = np.minimum(hi_a, rating[:, None])
    cur = np.where(cur >= np.asarray(min_a, dtype=float)[:, None] - _TOL_A, np.maximum(cur, 0.0), 0.0)
    return (cur * slot_h).sum(axis=1) * kw_per_a


def from_snapshot(snapshot, horizon="24h", step="15min", options: OptimizeOptions | None = None,
                  first_slot_is_control_step: bool = False) -> Formulation:
    """The formulation for a policy snapshot: plugged-in cars, remaining needs, forecast load.

    With ``first_slot_is_control_step`` the first slot lasts ``snapshot.step`` and the regular
    slots follow it (measured: not better, see docs/bench_optimize.md).
    Departures are moved ``options.departure_margin_h`` earlier (at most a quarter of the time
    left), but never to less than one control step from now (a car whose departure has passed
    still wants its energy now); an unknown (NaT) departure means plugged in all horizon, an
    unknown (NaN) energy means all it can take. A car that drew less than offered gets energy
    in proportion (``draw_ratio``, from the last measurement). ``snapshot.cars.max_current_a`` already holds the
    current caps; time-window caps of later slots come from the site.
    """
    from nowblock.milp.kernels import snapshot_plan_arrays

    cars = snapshot.cars
    opts = options or OptimizeOptions(current_step_a=float(snapshot.current_step_a))
    site = snapshot.site
    ticks_ns, dt_h = slot_ticks(snapshot.time, horizon, step,
                                 first=snapshot.step if first_slot_is_control_step else None)
    times = SlotTicks(ticks_ns, pd.Timestamp(snapshot.time).unit)
    cp = snapshot.values("cp_index").astype(np.int64)
    max_a = snapshot.values("max_current_a")
    phases = snapshot.values("phases")
    columns = cars.columns
    has_offered = "offered_current_a" in columns
    use_ratio = has_offered and "measured_current_a" in columns
    nan = np.full(len(cars), np.nan)
    offered = snapshot.values("offered_current_a") if has_offered else nan
    meas = snapshot.values("measured_current_a") if use_ratio else nan
    # One kernel for the per-car, per-slot arrays (the numpy version was ~30 calls, most of the
    # adapter's time). Rules, measured in simulation (docs/optimizer.md):
    # - departures move ``departure_margin_h`` earlier (at most a quarter of the time left), never
    #   to less than one control step from now (a car whose departure has passed still wants its
    #   energy now);
    # - a car leaving within the first slot counts only the time it stays: counting the whole
    #   first slot made the plan offer too little in a car's last step (full default week);
    # - later slots count only when the car is there for all of it: a plan that leaves energy for
    #   the last partial slot is at the mercy of when exactly the car leaves;
    # - a car that drew less than offered gets energy in proportion (``draw_ratio``; unknown, or 0
    #   when paused or full, counts as 1);
    # - a remainder smaller than one slot at the minimum current is planned as that slot: valued
    #   at its true size it never beat the slot's price and slipped past departure;
    # - the last ``taper_kwh`` of a car's remaining energy is planned at ``taper_share`` of its
    #   maximum draw in its last hours (not in the first slot): a battery's taper is not observed.
    has_caps = site.has_caps and len(cp)
    plugged, upper, ratio, urgency, need, energy, cell_car, cell_slot = snapshot_plan_arrays(
        snapshot.hours_to_departure_h, max_a, site.cp_max_current_a[cp], snapshot.values("min_current_a"), phases,
        meas, offered, snapshot.remaining_kwh, dt_h, snapshot.dt_h, float(opts.urgency_h),
        float(opts.departure_margin_h), float(site.voltage_v), use_ratio, float(opts.taper_kwh),
        float(opts.taper_share))
    if has_caps:
        # ``snapshot.cars.max_current_a`` holds today's cap; later slots follow the site's windows.
        upper = np.where(plugged > 0, np.minimum(upper, site.cap_current_a(times.index(), dt_h * 3600.0)[:, cp].T), 0.0)
    unknown = ~np.isfinite(need)
    if unknown.any():  # unknown energy: the car wants all it can get over the horizon
        can = (upper * plugged * dt_h[None, :]).sum(axis=1) * phases * site.voltage_v / 1000.0
        one_slot_kwh = snapshot.values("min_current_a") * phases * site.voltage_v / 1000.0 * dt_h[0] * ratio
        need[unknown] = np.where((can > 1e-3) & (can < one_slot_kwh), one_slot_kwh, can)[unknown]
    # The kernel's own energy per ampere and (without caps) cells: the same numbers the
    # formulation would compute, passed explicitly so that it does not compute them again.
    kernel = KernelArrays(energy, None if has_caps else cell_car, None if has_caps else cell_slot)
    return Formulation(
        site=site, slot_starts=times, dt_h=dt_h if (dt_h != dt_h[0]).any() else float(dt_h[0]),
        session_ids=cars.index.to_numpy(str),
        cp_index=cp, phases=phases.astype(np.int64),
        min_current_a=snapshot.values("min_current_a"), upper_a=upper, plugged=plugged,
        need_kwh=need, priority=nan_to(snapshot.values("priority"), 1.0),
        base_kw=on_slots(snapshot.base_load_kw, ticks_ns, dt_h, 0.0, "max"),
        price_eur_per_kwh=on_slots(snapshot.prices_eur_per_kwh, ticks_ns, dt_h, 0.0),
        prev_current_a=offered, options=opts, draw_ratio=ratio, shortfall_weight=urgency,
        incidence_a=snapshot.incidence(), kernel_arrays=kernel,
    )


def slot_snapshot(form: Formulation, t: int, delivered_kwh: np.ndarray) -> BlockSnapshot:
    """A :class:`BlockSnapshot` of slot ``t`` as the formulation sees it (the cars that can charge
    in it, ``delivered_kwh`` [kWh] per car so far), for :func:`nowblock.seam.make_safe` and the
    baseline heuristics."""
    step = pd.Timedelta(hours=float(form.slot_h[t]))
    last = form.n_slots - 1 - np.argmax(form.plugged[:, ::-1] > 0, axis=1)
    departure = form.times[last] + pd.to_timedelta(form.plugged[np.arange(form.n_cars), last] * form.slot_h[last], unit="h")
    cars = pd.DataFrame({
        "charge_point_id": np.array(form.site.charge_point_ids, dtype=object)[form.cp_index],
        "cp_index": form.cp_index,
        "phases": form.phases,
        "min_current_a": form.min_current_a,
        "max_current_a": np.where(form.upper_a[:, t] >= form.min_current_a - _TOL_A, form.upper_a[:, t], 0.0),
        "arrival": form.times[0],
        "departure": departure,
        "energy_requested_kwh": form.need_kwh,
        "energy_delivered_kwh": delivered_kwh,
        "measured_current_a": np.nan,
        "offered_current_a": 0.0,
        "priority": form.priority,
        "needs_known": True,
    }, index=pd.Index(form.session_ids, name="session_id"))
    cars = cars[form.plugged[:, t] > 0]
    base = pd.Series(form.base_kw[t:], index=form.times[t:], name="kw")
    prices = pd.Series(form.price_eur_per_kwh[t:], index=form.times[t:], name="eur_per_kwh")
    return BlockSnapshot(time=form.times[t], site=form.site, step=step, cars=cars, base_load_kw=base,
                         prices_eur_per_kwh=prices, current_step_a=form.options.current_step_a)
