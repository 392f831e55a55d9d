"""The frames :class:`~nowblock.ocpp.state.LiveState` hands out: its running transactions as a
BlockSnapshot's ``cars`` frame, and one row per station."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nowblock.ocpp import profiles as pr
from nowblock.seam import CAR_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from nowblock.ocpp.state import LiveState

#: Extra snapshot columns beyond CAR_COLUMNS.
OCPP_COLUMNS = [
    "transaction_id", "connector_id", "version", "connected", "last_seen", "power_kw",
    "soc_percent", "status", "accepted_limit_a", "stale", "reported_limit_a", "tx_profile_refused",
]


def cars_frame(state: "LiveState", now: datetime | None = None) -> pd.DataFrame:
    """See :meth:`LiveState.snapshot <nowblock.ocpp.state.LiveState.snapshot>` (currents [A],
    power [kW], energy [kWh], times UTC)."""
    now = now or state.clock()
    rows = []
    caps = state.site.cap_current_a([now])[0]
    for t in state.running():
        cp = state.site.charge_point(t.cp_id)
        st = state.stations[t.cp_id]
        j = int(state.site.cp_index([t.cp_id])[0])
        cap = float(caps[j])
        ev_max = t.ev_max_current_a if not math.isnan(t.ev_max_current_a) else math.inf
        ev_min = t.ev_min_current_a if not math.isnan(t.ev_min_current_a) else 0.0
        min_a = max(cp.min_current_a, ev_min)
        # A car whose own maximum is below the point's minimum is offered the minimum and
        # draws its own maximum (a pilot signal cannot offer less than 6 A, IEC 61851).
        mx = min(cp.max_current_a, cap, max(ev_max, min_a))
        lim = state.applied_limit_a(t.cp_id, t.connector_id, now)
        measured = np.nanmax(t.current_a) if not all(math.isnan(x) for x in t.current_a) else math.nan
        if math.isnan(measured) and math.isfinite(t.power_w) and t.power_w >= 0:
            # A meter that reports power only (W): per-phase current on the phases modelled.
            measured = t.power_w / (state.site.voltage_v * (t.phases_used or cp.phases))
        reported = state.reported_limit_a(t.cp_id, t.connector_id, now)
        stale = t.last_meter is None or (now - t.last_meter).total_seconds() > state.stale_after_s
        rows.append({
            "session_id": t.session_id,
            "charge_point_id": t.cp_id,
            "cp_index": j,
            "phases": int(min(t.phases_used or cp.phases, cp.phases)),
            "min_current_a": float(min_a),
            "max_current_a": float(mx),
            "arrival": pd.Timestamp(t.start),
            "departure": pd.Timestamp(t.departure) if t.departure else pd.NaT,
            "energy_requested_kwh": t.energy_requested_kwh,
            "energy_delivered_kwh": t.energy_delivered_kwh,
            "measured_current_a": float(measured),
            "offered_current_a": float(min(lim, cp.max_current_a)) if lim is not None else float(cp.max_current_a),
            "priority": 1.0,
            "needs_known": t.departure is not None and not math.isnan(t.energy_requested_kwh),
            "transaction_id": t.transaction_id,
            "connector_id": t.connector_id,
            "version": st.version,
            "connected": st.connected and not t.orphaned,
            "last_seen": pd.Timestamp(st.last_seen) if st.last_seen else pd.NaT,
            "power_kw": t.power_w / 1000.0,
            "soc_percent": t.soc_percent,
            "status": st.connector(t.connector_id).status,
            "accepted_limit_a": math.nan if lim is None else float(lim),
            "stale": bool(stale),
            "reported_limit_a": math.nan if reported is None else float(reported),
            "tx_profile_refused": st.refused(pr.TX, transaction_id=t.transaction_id, now=now,
                                            memory_s=state.refusal_memory_s) is not None,
        })
    cols = ["session_id", *CAR_COLUMNS, *OCPP_COLUMNS]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("arrival", "departure", "last_seen"):
        df[c] = pd.to_datetime(df[c], utc=True)
    df = df.astype({"cp_index": "int64", "phases": "int64", "needs_known": "bool", "connected": "bool",
                    "stale": "bool", "connector_id": "int64", "tx_profile_refused": "bool",
                    "reported_limit_a": "float64"})
    return df.set_index("session_id")


def stations_frame(state: "LiveState") -> pd.DataFrame:
    """See :meth:`LiveState.stations_frame <nowblock.ocpp.state.LiveState.stations_frame>`."""
    rows = [{
        "cp_id": s.cp_id, "version": s.version, "connected": s.connected,
        "last_seen": pd.Timestamp(s.last_seen) if s.last_seen else pd.NaT,
        "running": len(state.running(s.cp_id)), "rate_unit": s.rate_unit,
    } for s in state.stations.values()]
    return pd.DataFrame(rows).set_index("cp_id")
