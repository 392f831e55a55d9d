"""Meter values of both OCPP versions into one flat reading with units in the keys."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone

from nowblock.ocpp.edge import hourly, plausible
from nowblock.ocpp.profiles import parse_time

log = logging.getLogger(__name__)

_SCALE = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0, "A": 1.0, "Percent": 1.0, "V": 1.0}
_KEYS = {
    "Energy.Active.Import.Register": "energy_wh",
    "Power.Active.Import": "power_w",
    "Current.Offered": "offered_a",
    "SoC": "soc_percent",
    "Voltage": "voltage_v",
}

#: Measurands that count what flows to the car: a negative value is no draw, and is skipped.
_IMPORT = {"Energy.Active.Import.Register": "energy register", "Power.Active.Import": "import power",
           "Current.Import": "import current"}


def parse_meter_values(meter_value: list[dict], now: datetime | None = None,
                       cp_id: str = "", offset_s: float = 0.0) -> tuple[dict[str, float], datetime | None]:
    """Flatten (snake_case) ``meter_value`` entries of either version; the latest value wins.

    Returns ``({"energy_wh", "power_w", "current_l1_a".."current_l3_a", "power_l1_w"..
    "power_l3_w", "offered_a", "soc_percent", "voltage_v"}: only those present, timestamp of
    the latest entry)``. A Current.Import without a phase counts for L1 (single-phase meters
    report it so); a Power.Active.Import per phase ("L1" or "L1-N") is that phase's power, and
    their sum the power when no total is given.
    Unparseable samples (also ``NaN``, infinite values, a negative energy register, import power
    or import current: an import is no draw) are logged and skipped, never raised: one bad
    sample must not cost the rest of the message.
    With ``now``, a timestamp outside the plausible window around the station's now, ``now``
    plus its known clock offset ``offset_s`` [s] (:func:`nowblock.ocpp.edge.station_offset_s`;
    see :func:`nowblock.ocpp.edge.event_time`), is dropped, so the caller uses its own clock; the
    warning is logged at most hourly a station (once per MeterValues, a station whose clock ran
    2 h ahead logged 37 in 4 minutes). The timestamp returned is the station's.
    """
    out: dict[str, float] = {}
    latest: datetime | None = None
    dated = []
    for k, mv in enumerate(meter_value or []):
        try:
            ts = parse_time(mv.get("timestamp"))
        except (ValueError, TypeError, OverflowError):
            ts = None
        if ts is not None and now is not None and not plausible(ts, now + timedelta(seconds=float(offset_s))):
            if hourly(cp_id, "meter_implausible", now):
                log.warning("%s: meter value dated %s is implausible (station clock off?); using now (logged at "
                            "most hourly)", cp_id, mv.get("timestamp"))
            ts = None
        if ts is not None and (latest is None or ts > latest):
            latest = ts
        dated.append((ts, k, mv))
    # In time order, so that the latest value wins whatever the order of the entries (the last
    # entry won: an older one after a newer one set a car's current back, an outside test); an
    # entry without a usable time counts as the latest (it is dated on arrival).
    dated.sort(key=lambda e: (e[0] is None, e[0] or datetime.min.replace(tzinfo=timezone.utc), e[1]))
    for _, _, mv in dated:
        for sv in mv.get("sampled_value", []):
            try:
                measurand = sv.get("measurand", "Energy.Active.Import.Register")
                phase = sv.get("phase")
                uom = sv.get("unit_of_measure") or {}
                unit = sv.get("unit") or uom.get("unit")
                mult = 10.0 ** float(uom.get("multiplier", 0))
                value = float(sv["value"]) * mult * _SCALE.get(unit or "", 1.0)
                if not math.isfinite(value):
                    raise ValueError("not a finite number")
                if measurand in _IMPORT and value < 0:  # an import is never negative: a broken (or export) reading
                    raise ValueError(f"negative {_IMPORT[measurand]}")
            except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
                log.warning("%s: skipping unreadable sampled value %.200r (%s)", cp_id, sv, exc)
                continue
            if measurand == "Current.Import":
                p = (phase or "L1")[:2]
                if p in ("L1", "L2", "L3"):
                    out[f"current_{p.lower()}_a"] = value
            elif measurand == "Power.Active.Import" and phase in ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N"):
                # Chargers configured for per-phase power only: the phase's current follows from it
                # (LiveState.on_meter); dropped, they left the loop blind to what the car drew.
                out[f"power_{phase[:2].lower()}_w"] = value
            elif measurand in _KEYS and (phase is None or measurand == "Voltage"):
                out[_KEYS[measurand]] = value
    phased = [out[k] for k in ("power_l1_w", "power_l2_w", "power_l3_w") if k in out]
    if phased and "power_w" not in out:
        out["power_w"] = float(sum(phased))
    return out, latest


def phases_from_power(current_a, power_w, voltage_v: float, known: int) -> int | None:
    """More phases than ``known`` when the total power [W] is more than ``known`` phases at the
    largest current read [A] and ``voltage_v`` [V] can carry (half a phase of margin for the
    voltage and power factor); else None."""
    vals = [float(x) for x in current_a if not math.isnan(float(x))]
    if power_w is None or not vals or max(vals) < 1.0 or not math.isfinite(float(power_w)):
        return None
    n = min(3, int(round(float(power_w) / (voltage_v * max(vals)))))
    return n if n > known else None


def phases_from_currents(current_a) -> int | None:
    """Phases a car draws on, from one reading of the three phase currents [A]; None if unknown.

    Only a reading of all three phases can show that a phase carries nothing: a charger that
    reports one aggregate Current.Import (parsed as L1) says nothing about L2 and L3, and
    taking it for a single-phase car would leave two grid phases unaccounted for.
    """
    vals = [float(x) for x in current_a]
    if len(vals) != 3 or any(math.isnan(x) for x in vals) or max(vals) < 1.0:
        return None
    # A phase carrying under 10 % of the strongest one is not in use (measurement noise).
    return max(1, sum(1 for x in vals if x >= 0.1 * max(vals)))
