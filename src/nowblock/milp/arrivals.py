"""Holding back capacity for cars that will arrive (issue 4): expected arrivals as soft demand.

A receding-horizon plan that knows only the cars plugged in now gives them the cheap hours and
the whole grid connection; when the evening's arrivals come, the room may be gone. With an
arrivals forecast (:class:`nowblock.forecast.ArrivalForecaster`), :func:`with_expected_arrivals`
adds one *virtual car* per planning slot with expected arrivals: it is plugged in from that
slot for the expected dwell, wants the expected energy of those arrivals, loads only the grid
connection (its three phases evenly: which charging point they will use is unknown), has no
"0 or >= min" binary, and its shortfall weighs ``priority`` (default 0.5, below a real car's 1):
a soft reservation that real cars' needs outrank. Virtual cars never receive a setpoint; their
ids start with ``"expected@"``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from nowblock.seam import root_index
from nowblock.milp.formulation import Formulation

VIRTUAL_PREFIX = "expected@"


def arrivals_on_slots(forecast: pd.DataFrame, form: Formulation) -> pd.DataFrame:
    """The forecast (``arrivals``, ``energy_total_kwh``, ``dwell_h`` per forecast slot) summed
    onto the formulation's planning slots (arrivals [cars], energy [kWh]; dwell [h] weighted by
    arrivals). Forecast slots before the first planning slot start are dropped."""
    if forecast is None or len(forecast) == 0:
        return pd.DataFrame({"arrivals": np.zeros(form.n_slots), "energy_kwh": 0.0, "dwell_h": 0.0})
    idx = pd.DatetimeIndex(forecast.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    t_ns = idx.as_unit("ns").asi8
    starts = pd.DatetimeIndex(form.times).as_unit("ns").asi8
    end = starts[-1] + int(form.slot_h[-1] * 3.6e12)
    pos = np.searchsorted(starts, t_ns, side="right") - 1
    ok = (pos >= 0) & (t_ns >= starts[0]) & (t_ns < end)
    n = forecast["arrivals"].to_numpy(float)
    e = forecast["energy_total_kwh"].to_numpy(float) if "energy_total_kwh" in forecast else (
        n * forecast["energy_kwh"].to_numpy(float))
    d = forecast["dwell_h"].to_numpy(float) if "dwell_h" in forecast else np.full(len(n), 8.0)
    n, e, d = np.nan_to_num(n), np.nan_to_num(e), np.nan_to_num(d)
    cnt = np.bincount(pos[ok], weights=n[ok], minlength=form.n_slots)
    energy = np.bincount(pos[ok], weights=e[ok], minlength=form.n_slots)
    dwell = np.bincount(pos[ok], weights=(n * d)[ok], minlength=form.n_slots)
    dwell = np.divide(dwell, cnt, out=np.zeros_like(dwell), where=cnt > 0)
    return pd.DataFrame({"arrivals": cnt, "energy_kwh": energy, "dwell_h": dwell}, index=form.times)


def with_expected_arrivals(form: Formulation, forecast: pd.DataFrame, *, priority: float = 0.5,
                           car_max_current_a: float = 16.0, min_energy_kwh: float = 0.05) -> Formulation:
    """``form`` plus one virtual car per planning slot with expected arrivals (see module doc).

    ``forecast`` is :meth:`ArrivalForecaster.predict` output (any slot length; summed onto the
    planning slots). A virtual car may draw up to ``arrivals x car_max_current_a`` [A] per
    phase, capped at the grid connection's rating; slots expecting less than
    ``min_energy_kwh`` [kWh] get none. Arrivals in the first slot are left out (a car arriving
    now is in the next snapshot).
    """
    if priority < 0:
        raise ValueError(f"priority: must be >= 0, got {priority}")
    slots = arrivals_on_slots(forecast, form)
    T = form.n_slots
    a = slots["arrivals"].to_numpy(float)
    e = slots["energy_kwh"].to_numpy(float)
    d = slots["dwell_h"].to_numpy(float)
    k = np.nonzero((e >= min_energy_kwh) & (np.arange(T) >= 1))[0]
    if not len(k):
        return form
    m = len(k)
    site = form.site
    r0 = root_index(site)
    offs_h = np.concatenate([[0.0], np.cumsum(form.slot_h)[:-1]])
    leave_h = offs_h[k] + np.maximum(d[k], form.slot_h[k])
    # Plugged for whole slots from arrival until the expected departure.
    plugged = ((np.arange(T)[None, :] >= k[:, None])
               & ((offs_h + form.slot_h)[None, :] <= leave_h[:, None] + 1e-9)).astype(float)
    plugged[np.arange(m), k] = 1.0
    root_a = float(np.min(site.limits_a[r0]))
    upper = np.minimum(np.maximum(a[k], 1.0) * car_max_current_a, root_a)[:, None] * plugged
    inc_v = np.zeros((form.incidence.shape[0], m))
    inc_v[3 * r0: 3 * r0 + 3, :] = 1.0  # balanced three-phase load on the grid connection only
    ids = np.array([f"{VIRTUAL_PREFIX}{t.isoformat()}" for t in form.times[k]], dtype=str)
    return _with_virtual(form, ids, np.zeros(m, dtype=np.int64), np.full(m, 3), upper, plugged, e[k], priority, inc_v)


def _with_virtual(form: Formulation, ids: np.ndarray, cp_index: np.ndarray, phases: np.ndarray, upper_a: np.ndarray,
                  plugged: np.ndarray, need_kwh: np.ndarray, priority: float, incidence: np.ndarray) -> Formulation:
    """``form`` with virtual cars appended: no minimum current, no previous setpoint, shortfall
    weight 1 and no first-slot preference (they never receive a setpoint)."""
    m = len(ids)
    weight = form.shortfall_weight
    ratio = form.draw_ratio
    bonus = form.now_bonus_eur_per_kwh
    return dataclasses.replace(
        form,
        session_ids=np.concatenate([form.session_ids.astype(str), ids]),
        cp_index=np.concatenate([form.cp_index, np.asarray(cp_index).astype(form.cp_index.dtype)]),
        phases=np.concatenate([form.phases, np.asarray(phases).astype(form.phases.dtype)]),
        min_current_a=np.concatenate([form.min_current_a, np.zeros(m)]),
        upper_a=np.vstack([form.upper_a, upper_a]),
        plugged=np.vstack([form.plugged, plugged]),
        need_kwh=np.concatenate([form.need_kwh, need_kwh]),
        priority=np.concatenate([form.priority, np.full(m, float(priority))]),
        prev_current_a=np.concatenate([form.prev_current_a, np.full(m, np.nan)]),
        draw_ratio=None if ratio is None else np.concatenate([ratio, np.ones(m)]),
        shortfall_weight=None if weight is None else np.concatenate([weight, np.ones(m)]),
        now_bonus_eur_per_kwh=None if bonus is None else np.concatenate([bonus, np.zeros(m)]),
        due_kwh=None if form.due_kwh is None else np.concatenate([form.due_kwh, need_kwh]),
        incidence_a=np.hstack([form.incidence, incidence]),
        kernel_arrays=None,  # computed for the real cars only
    )


def with_expected_sessions(form: Formulation, sessions: pd.DataFrame, *, priority: float = 0.5) -> Formulation:
    """``form`` plus one virtual car per expected session, at its own charging point.

    Where :func:`with_expected_arrivals` spreads expected arrivals evenly over the grid
    connection's three phases, this places each expected session where it will plug in: a
    single-phase car at a charger wired to L3 loads L3 and every fuse above that charger. That is
    the information that matters on a block whose scarce resource is one phase.

    Parameters
    ----------
    form : Formulation
        The plan of the cars plugged in now.
    sessions : pandas.DataFrame
        One row per expected session: ``arrival``, ``departure`` (tz-aware), ``energy_kwh`` [kWh],
        ``cp_index`` (position of the charging point in ``form.site``), ``phases`` (1 or 3) and
        ``max_current_a`` [A per phase]. A perfect forecast (the sessions that will arrive) is
        the diagnosis of how much a receding-horizon plan loses by not knowing the future.
    priority : float
        Weight of an expected session's shortfall against a real car's (1).

    Returns
    -------
    Formulation
        Virtual cars plugged in for the whole planning slots between arrival and departure,
        with no minimum current (they receive no setpoint; ids start with ``"expected@"``).
        Sessions arriving in the first slot or with no whole slot in the horizon are left out.
    """
    if priority < 0:
        raise ValueError(f"priority: must be >= 0, got {priority}")
    if sessions is None or len(sessions) == 0:
        return form
    starts = pd.DatetimeIndex(form.times).as_unit("ns").asi8
    ends = starts + (np.asarray(form.slot_h) * 3.6e12).astype(np.int64)
    arr = pd.DatetimeIndex(pd.to_datetime(sessions["arrival"], utc=True)).as_unit("ns").asi8
    dep = pd.DatetimeIndex(pd.to_datetime(sessions["departure"], utc=True)).as_unit("ns").asi8
    plugged = ((starts[None, :] >= arr[:, None]) & (ends[None, :] <= dep[:, None])).astype(float)
    keep = (arr > starts[0]) & (plugged.sum(axis=1) > 0)
    if not keep.any():
        return form
    rows = sessions[keep]
    plugged = plugged[keep]
    m = len(rows)
    cp = rows["cp_index"].to_numpy(np.int64)
    phases = rows["phases"].to_numpy(np.int64)
    upper = rows["max_current_a"].to_numpy(float)[:, None] * plugged
    ids = np.array([f"{VIRTUAL_PREFIX}{i}" for i in range(m)], dtype=str)
    return _with_virtual(form, ids, cp, phases, upper, plugged, rows["energy_kwh"].to_numpy(float), priority,
                         form.site.phase_incidence(cp, phases))


def is_virtual(session_ids) -> np.ndarray:
    """Boolean per id: a virtual (expected-arrivals) car of :func:`with_expected_arrivals`."""
    return np.char.startswith(np.asarray(session_ids, dtype=str), VIRTUAL_PREFIX)
