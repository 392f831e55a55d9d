"""What the block really draws, against its ratings: overloads and other alarms.

A fuse phase measured above its rating (not planned: measured, with the other load) starts an
overload; when it ends, the overload is an alarm with its size and duration. Alarms go to the
log at WARNING, to a bounded list the HTTP API and the operator page read, and to the store's
event table when there is a store.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nowblock.block.site import PHASES, Site

log = logging.getLogger(__name__)


class Alarms:
    """The alarms raised so far (the last ``keep``), logged and stored.

    Parameters
    ----------
    store : Store, optional
        Its ``record_event(time, kind, data)`` keeps every alarm.
    keep : int
        How many recent alarms :attr:`recent` holds.
    """

    def __init__(self, store=None, keep: int = 1000) -> None:
        self.store = store
        self.keep = int(keep)
        self.recent: list[dict] = []

    def raise_alarm(self, kind: str, now: pd.Timestamp, **data) -> None:
        """Record an alarm of ``kind`` ("overload", "not_following", ...) with its data."""
        rec = {"time": now, "kind": kind, **data}
        self.recent.append(rec)
        del self.recent[:-self.keep]
        log.warning("alarm %s: %s", kind, ", ".join(f"{k}={v}" for k, v in data.items()))
        record = getattr(self.store, "record_event", None)
        if callable(record):
            try:
                record(now, kind, data)
            except Exception:  # noqa: BLE001 - the alarm is logged either way
                log.exception("could not store the %s alarm", kind)


class OverloadWatch:
    """Measured fuse-phase load against the ratings: an overload's start, size and end.

    Parameters
    ----------
    site : Site
    alarms : Alarms
        Where an overload goes when it ends.
    tolerance_a : float
        [A] Load above a rating by more than this is an overload (meters are not exact).
    """

    def __init__(self, site: Site, alarms: Alarms, tolerance_a: float = 0.5) -> None:
        self.site = site
        self.alarms = alarms
        self.tolerance_a = float(tolerance_a)
        self._open: dict[tuple[str, str], dict] = {}  # (fuse, phase) -> the running overload

    @property
    def active(self) -> list[dict]:
        """Fuse phases above their rating now: fuse_id, phase, limit_a, worst_a [A], start."""
        return [dict(v) for v in self._open.values()]

    def watch(self, obs, now: pd.Timestamp, changed_at: dict | None = None, base_kw: float | None = None) -> None:
        """Compare the observation's measured currents and other load with the ratings.

        Parameters
        ----------
        obs : Observation
            ``cars`` (measured_current_a [A], offered_current_a [A], last_meter, cp_index,
            phases) and ``base_load_kw`` [kW].
        now : pandas.Timestamp
        changed_at : dict, optional
            session_id -> when its limit was last lowered
            (:meth:`~nowblock.loop.step.ControlStep.lowered_since`; a raise does not move it). A
            car read before its limit went down is counted at most at the limit it holds now:
            summing readings taken before and after a re-sharing adds a car's old draw to the
            draw another car took over from it, an overload that never flowed. A car that keeps
            drawing above its lowered limit shows it in its next reading (and is escalated
            meanwhile). A reading before a raise is the car's draw: capped at the raised limit,
            an over-draw read before it vanished and its overload alarm closed while it went on.
        base_kw : float, optional
            [kW] The block's other load as metered now; without it the observation's first slot
            (which the planner raises to the next slot's forecast, so it is no measurement).
        """
        site, cars = self.site, obs.cars
        if len(cars):
            meas = np.nan_to_num(cars["measured_current_a"].to_numpy(float), nan=0.0)
            if changed_at:
                read = pd.to_datetime(cars["last_meter"], utc=True)
                since = pd.to_datetime(pd.Series([changed_at.get(s) for s in cars.index], index=cars.index,
                                                 dtype=object), utc=True)
                before = (read < since).to_numpy(bool)  # NaT on either side compares False
                offered = cars["offered_current_a"].to_numpy(float)
                meas = np.where(before & np.isfinite(offered), np.minimum(meas, offered), meas)
            load = site.fuse_phase_currents_a(meas, cars["cp_index"].to_numpy(np.int64),
                                              cars["phases"].to_numpy(np.int64))
        else:
            load = np.zeros_like(site.limits_a)
        if base_kw is not None and np.isfinite(base_kw):
            base = float(base_kw)
        else:
            base = float(obs.base_load_kw.iloc[0]) if len(obs.base_load_kw) else 0.0
        load[0] += site.base_load_phase_current_a(base)
        excess = load - site.limits_a
        for f, fid in enumerate(site.fuse_ids):
            for p in range(3):
                key = (fid, PHASES[p])
                over = float(excess[f, p])
                ev = self._open.get(key)
                if over > self.tolerance_a:
                    if ev is None:
                        ev = self._open[key] = {"start": now, "worst_a": over, "fuse_id": fid, "phase": PHASES[p],
                                                "limit_a": float(site.limits_a[f, p])}
                        log.warning("overload: fuse %s %s measured %.1f A over its %.0f A rating", fid, PHASES[p],
                                    over, ev["limit_a"])
                    ev["worst_a"] = max(ev["worst_a"], over)
                elif ev is not None:
                    del self._open[key]
                    self.alarms.raise_alarm("overload", now, fuse_id=fid, phase=PHASES[p],
                                            worst_a=round(ev["worst_a"], 2), limit_a=ev["limit_a"],
                                            start=ev["start"].isoformat(),
                                            duration_s=(now - ev["start"]).total_seconds())
