"""Estimating the needs (departure, energy) a car did not report: one rule, simulated and live.

OCPP 1.6 stations never say when a car leaves or how much it wants; 2.0.1 stations often do
not either. :class:`FallbackNeedsEstimator` is the rule used without history; a fitted
:class:`nowblock.forecast.SessionNeedsForecaster` refines it where the block has history.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
_NAT = np.iinfo(np.int64).min  # NaT as int64 nanoseconds


class FallbackNeedsEstimator:
    """A simple needs estimator for ``needs="unknown"`` when none is given.

    Departure: ``dwell_h`` [h] after arrival, and never earlier than ``min_left_h`` [h] from
    now (a car still plugged in past its typical dwell will likely stay a while).
    Energy: ``energy_kwh`` [kWh], or ``top_up_kwh`` more than delivered so far while the car
    keeps drawing; a car that was offered at least its minimum and drew (almost) nothing is
    taken to be full, so its estimate is what it got.
    """

    def __init__(self, dwell_h: float = 10.0, energy_kwh: float = 15.0, top_up_kwh: float = 2.0,
                 min_left_h: float = 1.0):
        self.dwell_h = dwell_h
        self.energy_kwh = energy_kwh
        self.top_up_kwh = top_up_kwh
        self.min_left_h = min_left_h

    def predict_needs(self, cars: pd.DataFrame, time: pd.Timestamp) -> pd.DataFrame:
        """Estimated ``departure`` (UTC) and ``energy_kwh`` [kWh] per session_id."""
        arrival = pd.DatetimeIndex(cars["arrival"]).as_unit("ns")
        now_ns = pd.Timestamp(time).as_unit("ns").value
        dep_ns = np.maximum(arrival.asi8 + int(self.dwell_h * 3.6e12), now_ns + int(self.min_left_h * 3.6e12))
        got = cars["energy_delivered_kwh"].to_numpy(float)
        meas = cars["measured_current_a"].to_numpy(float)
        offered_enough = cars["offered_current_a"].to_numpy(float) >= cars["min_current_a"].to_numpy(float)
        full = ~np.isnan(meas) & (meas < 0.5) & offered_enough & (got > 0)
        energy = np.where(full, got, np.maximum(self.energy_kwh, got + self.top_up_kwh))
        departure = pd.DatetimeIndex(dep_ns.astype("datetime64[ns]")).tz_localize("UTC")
        return pd.DataFrame(
            {"departure": departure, "energy_kwh": energy, "needs_known": np.zeros(len(cars), dtype=bool)},
            index=cars.index,
        )


class NeedsEstimation:
    """Fill in the needs no car reported: the one rule of the simulator and the live loop.

    Parameters
    ----------
    estimator : object, optional
        Anything with ``predict_needs(cars, time) -> DataFrame`` giving ``departure`` (UTC) and
        ``energy_kwh`` [kWh] per session_id, and optionally the quantile columns
        ``departure_q0.25`` and ``energy_kwh_q0.75`` (a fitted
        :class:`nowblock.forecast.SessionNeedsForecaster`); gaps and failures fall back to
        :class:`FallbackNeedsEstimator`. None: the fallback alone.
    top_up_kwh : float
        [kWh] A car that still draws wants at least this much more than it got, whatever the
        estimate said.

    Notes
    -----
    The column ``needs_estimate`` says where each car's needs came from: ``""`` (reported),
    ``"fitted"`` (the estimator gave both), ``"provisional"`` (it gave both but marked them
    ``provisional``, as :class:`nowblock.forecast.OnlineNeedsForecaster` does while it has seen
    few sessions) or ``"fallback"`` (the fallback rule filled them).
    Plan as if the car left early wanting much: the departure is the estimator's lower
    quartile and the energy its upper quartile when it gives them. A car that stopped drawing
    although offered its minimum is full: it wants what it got. A car staying past its
    (reported or estimated) departure is planned as leaving within the step.
    """

    def __init__(self, estimator=None, *, top_up_kwh: float = 2.0) -> None:
        self.estimator = estimator
        self.top_up_kwh = float(top_up_kwh)
        self.fallback = FallbackNeedsEstimator(top_up_kwh=top_up_kwh)

    def fill(self, cars: pd.DataFrame, now: pd.Timestamp, *, full: set, step: pd.Timedelta) -> pd.DataFrame:
        """A copy of ``cars`` (the snapshot columns) with every unknown departure and energy
        estimated, ``needs_known`` False for those; ``full`` are session ids of cars known to
        be full; ``step`` is the control step (a late car leaves within it)."""
        dep_ns = cars["departure"].array.as_unit("ns").asi8  # NaT: int64's minimum, so never "late"
        unknown = (~cars["needs_known"].to_numpy(bool) | (dep_ns == _NAT)
                   | np.isnan(cars["energy_requested_kwh"].to_numpy(float)))
        late = (dep_ns <= pd.Timestamp(now).value) & (dep_ns != _NAT)
        if not unknown.any() and not late.any():
            return cars
        cars = cars.copy()
        if unknown.any():
            blind = cars[unknown]
            est = self._estimate(blind, now, step)
            dep = cars["departure"].copy()
            dep[unknown] = pd.to_datetime(est["departure"], utc=True).dt.as_unit(dep.dt.unit).to_numpy()
            cars["departure"] = dep
            e = cars["energy_requested_kwh"].to_numpy(float, copy=True)
            got = cars["energy_delivered_kwh"].to_numpy(float)[unknown]
            is_full = cars.index[unknown].isin(list(full))
            e[unknown] = np.where(is_full, got, np.maximum(est["energy_kwh"].to_numpy(float), got + self.top_up_kwh))
            cars["energy_requested_kwh"] = e
            cars["needs_known"] = ~unknown
            source = np.full(len(cars), "", dtype=object)
            source[unknown] = est["source"].to_numpy(object)
            cars["needs_estimate"] = source
            late = (cars["departure"] <= now).to_numpy()
        if late.any():
            cars.loc[late, "departure"] = now + step
        return cars

    def _estimate(self, blind: pd.DataFrame, now: pd.Timestamp, step: pd.Timedelta) -> pd.DataFrame:
        fb = self.fallback.predict_needs(blind, now).assign(source="fallback")
        if self.estimator is None:
            return fb
        try:
            # A station clock ahead of ours dates a start after now (up to the quarter of an hour
            # the OCPP edge accepts): the estimator refuses a car that has not arrived, so it is
            # asked about as arriving now instead of every car falling back.
            arrival = pd.to_datetime(blind["arrival"], utc=True)
            ask = blind.assign(arrival=arrival.where(arrival <= now, now)) if (arrival > now).any() else blind
            got = self.estimator.predict_needs(ask, now).reindex(blind.index)
            dep_col = "departure_q0.25" if "departure_q0.25" in got else "departure"
            early = pd.to_datetime(got[dep_col], utc=True)
            early = early.where(early > now + step, now + step)
            e_col = "energy_kwh_q0.75" if "energy_kwh_q0.75" in got else "energy_kwh"
            energy = pd.to_numeric(got[e_col], errors="coerce")
            fitted = (early.notna() & energy.notna()).to_numpy()
            provisional = (got["provisional"].fillna(False).to_numpy(bool) if "provisional" in got
                           else np.zeros(len(got), dtype=bool))
            return pd.DataFrame({
                "departure": early.fillna(fb["departure"]),
                "energy_kwh": energy.fillna(fb["energy_kwh"]),
                "source": np.where(fitted, np.where(provisional, "provisional", "fitted"), "fallback"),
            }, index=blind.index)
        except Exception:  # noqa: BLE001 - a broken estimator must not stop control
            log.exception("needs estimator failed; using the fallback estimate")
            return fb
