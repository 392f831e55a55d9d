"""The limit sent again to a car at a watts-only station when its phases change, against the
project's RawStation (raw OCPP 1.6J frames checked against the official schemas both ways)."""

from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, limit_of, meter_16, now_iso

from nowblock.testing import central_system, eventually, make_test_site

V = 230.0  # make_test_site's phase-to-neutral voltage [V]


def _watts_station(action, payload):
    """A 1.6 station that takes limits in watts only and samples currents per phase."""
    if action == "GetConfiguration":
        return {"configurationKey": [
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Power"},
            {"key": "MeterValuesSampledData", "readonly": False, "value": "Current.Import"}]}
    if action in ("SetChargingProfile", "ClearChargingProfile", "ChangeConfiguration"):
        return {"status": "Accepted"}
    return {"status": "Rejected"}


def _tx_watts(s: RawStation) -> list[float]:
    """[W] The limit of every TxProfile the station received, in order."""
    return [limit_of(p["csChargingProfiles"]) for a, p in s.received if a == "SetChargingProfile"
            and p["csChargingProfiles"]["chargingProfilePurpose"] == "TxProfile"]


async def _started(cs, s: RawStation, ahead_s: float = 0.0):
    """Boot the station (its clock ``ahead_s`` [s] ahead of ours) and start a transaction; its id."""
    def stamp():
        return now_iso(datetime.now(timezone.utc) + timedelta(seconds=ahead_s))
    await s.boot()
    await eventually(lambda: cs.state.station("CP1").rate_unit == "W" and cs.state.station("CP1").failsafe)
    await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                      "timestamp": stamp()})
    r = await s.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": stamp()})
    await eventually(lambda: cs.state.running("CP1"))
    return r["transactionId"], stamp


@pytest.mark.parametrize("ahead_s", [0.0, 120.0])
async def test_phases_known_resend_does_not_depend_on_the_station_clock(ahead_s):
    """Review R3 L1 of session 35 (/tmp/s36/h2/r2_resend_clock.py): the re-send of a car's limit
    as the power of the 3 phases its meter showed was skipped as 'decided for the previous car'
    by comparing its booking (our clock) with StartTransaction's timestamp (the station's): a
    station 120 s ahead kept 3680 W, 5.33 A per phase for a 16 A limit."""
    async with central_system(make_test_site(1), backoff_s=0.01, response_timeout_s=3.0) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=_watts_station).connect()
        try:
            tx, stamp = await _started(cs, s, ahead_s)
            await cs.set_limit("CP1", 1, 16.0, transaction_id=tx)
            assert _tx_watts(s) == [pytest.approx(16.0 * V)]  # phases unknown: the power of one
            await s.ok("MeterValues", meter_16(1, tx, amps=[8.0, 8.0, 8.0], energy_wh=100.0, when=stamp()))
            await eventually(lambda: len(_tx_watts(s)) == 2, timeout_s=5)
            assert _tx_watts(s)[-1] / (3 * V) == pytest.approx(16.0)
            await eventually(lambda: cs.state.applied_limit_a("CP1", 1) == pytest.approx(16.0))  # its answer booked
            assert s.schema_errors == []
        finally:
            await s.close()
