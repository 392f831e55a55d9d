"""Estimating the needs (departure, energy) a car did not report: one rule, simulated and live.

OCPP 1.6 stations never say when a car leaves or how much it wants; 2.0.1 stations often do
not either. :class:`FallbackNeedsEstimator` is the rule used without history; a fitted
:class:`nowblock.forecast.SessionNeedsForecaster` refines it where the block has history.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


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
