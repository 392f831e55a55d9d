"""Meter values from a station whose clock is off by a known offset: dated in the central
system's clock by that offset, and a stamp out of the plausible window logged at most hourly."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, default_answer, meter_16, meter_201, now_iso

from nowblock.testing import central_system, make_test_site


async def _started_16(cs, ahead_s: float):
    """A 1.6 station whose clock runs ``ahead_s`` [s] ahead, booted, its car started; returns
    (station, transaction id, its clock as a function)."""
    s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=lambda a, p: default_answer("1.6", a, p)).connect()

    def clock() -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=ahead_s)

    await s.boot()
    await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                      "timestamp": now_iso(clock())})
    r = await s.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": now_iso(clock())})
    return s, r["transactionId"], clock


@pytest.mark.parametrize("ahead_s", [7200.0, 1200.0, 30.0])
async def test_meter_values_of_a_station_whose_clock_runs_ahead_are_dated_by_its_known_offset(ahead_s, caplog,
                                                                                             monkeypatch):
    """/tmp/s37/m4/repro_f5_stamps.py (an outside test, h4's vendor A writes local time as UTC):
    a station 2 h (or 20 min) ahead had every MeterValues logged as implausible (37 lines a station
    in 4 minutes) and dated on arrival, so a reading it took 10 minutes before counted as taken
    now; one 30 s ahead had its readings dated 30 s in the future (its car fresh that much longer).
    Now each is dated by the station's known offset, and nothing is logged."""
    from nowblock.ocpp import edge

    monkeypatch.setattr(edge, "_warned_at", {}, raising=False)  # a warning logged before in this process hides none
    async with central_system(make_test_site(1, grid_a=40)) as cs:
        s, tx, clock = await _started_16(cs, ahead_s)
        try:
            with caplog.at_level(logging.WARNING, logger="nowblock"):
                for k in range(8):
                    await s.ok("MeterValues", meter_16(1, tx, amps=[16.0] * 3, energy_wh=10.0 * (k + 1),
                                                       when=now_iso(clock())))
                    await asyncio.sleep(0.02)
            assert cs.state.station("CP1").clock.offset_s == pytest.approx(ahead_s, abs=2.0)
            t = cs.state.transaction("CP1", tx)
            assert abs((t.last_meter - datetime.now(timezone.utc)).total_seconds()) < 2.0
            assert [r for r in caplog.records if "meter value dated" in r.getMessage()] == []
        finally:
            await s.close()


async def test_a_reading_a_station_2_h_ahead_took_10_minutes_ago_counts_as_10_minutes_old():
    """Dated on arrival, a reading a station 2 h ahead took 10 minutes before it was sent kept its
    car fresh (its draw taken for the current one); by its offset it is 10 minutes old and the car
    is stale."""
    async with central_system(make_test_site(1, grid_a=40)) as cs:
        s, tx, clock = await _started_16(cs, 7200.0)
        try:
            for k in range(3):
                await s.ok("MeterValues", meter_16(1, tx, amps=[16.0] * 3, energy_wh=10.0 * (k + 1),
                                                   when=now_iso(clock() - timedelta(minutes=10))))
            t = cs.state.transaction("CP1", tx)
            age = (datetime.now(timezone.utc) - t.last_meter).total_seconds()
            assert 590.0 < age < 610.0
            assert bool(cs.state.snapshot().loc[t.session_id, "stale"])
        finally:
            await s.close()


async def test_an_implausible_meter_stamp_is_logged_at_most_hourly_a_station(caplog, monkeypatch):
    """A station whose clock is a year ahead (no offset can be known for it: beyond a day off):
    its readings are dated on arrival, and the warning comes once, not once per MeterValues."""
    from nowblock.ocpp import edge

    monkeypatch.setattr(edge, "_warned_at", {}, raising=False)  # nothing logged before in this process
    async with central_system(make_test_site(1, grid_a=40)) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "2.0.1",
                             answer=lambda a, p: default_answer("2.0.1", a, p)).connect()
        try:
            await s.boot()
            far = now_iso(datetime.now(timezone.utc) + timedelta(days=400))
            with caplog.at_level(logging.WARNING, logger="nowblock.ocpp.meter"):
                for k in range(5):
                    await s.ok("MeterValues", {"evseId": 1, "meterValue": meter_201(energy_wh=10.0 * k, when=far)})
            lines = [r for r in caplog.records if "meter value dated" in r.getMessage()]
            assert len(lines) == 1
        finally:
            await s.close()


async def test_an_implausible_transaction_event_stamp_is_logged_at_most_hourly_a_station(caplog, monkeypatch):
    """A 2.0.1 station a year ahead stamps every TransactionEvent so: one warning, not one each."""
    from nowblock.ocpp import edge

    monkeypatch.setattr(edge, "_warned_at", {}, raising=False)
    async with central_system(make_test_site(1, grid_a=40)) as cs:
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", "2.0.1",
                             answer=lambda a, p: default_answer("2.0.1", a, p)).connect()
        try:
            await s.boot()
            far = now_iso(datetime.now(timezone.utc) + timedelta(days=400))
            with caplog.at_level(logging.WARNING, logger="nowblock.ocpp.edge"):
                for k in range(5):
                    await s.ok("TransactionEvent", {
                        "eventType": "Started" if k == 0 else "Updated", "timestamp": far, "seqNo": k,
                        "triggerReason": "CablePluggedIn" if k == 0 else "MeterValuePeriodic",
                        "transactionInfo": {"transactionId": "T1"}, "evse": {"id": 1, "connectorId": 1}})
            assert cs.state.transaction("CP1", "T1") is not None
            lines = [r for r in caplog.records if "timestamp" in r.getMessage() and "implausible" in r.getMessage()]
            assert len(lines) == 1
        finally:
            await s.close()
