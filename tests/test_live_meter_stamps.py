"""Meter values from a station whose clock is off by a known offset: dated in the central
system's clock by that offset, and a stamp out of the plausible window logged at most hourly."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, default_answer, meter_16, meter_201, now_iso

from nowblock.testing import central_system, make_test_site


@asynccontextmanager
async def _booted(version: str, cp_id: str = "CP1", site=None, store=None):
    """A central system on ``site`` (one 40 A point by default), recording into ``store`` if
    given, and a raw station ``cp_id`` of ``version`` (default answers) booted on it: yields
    (central system, station); the station is closed on exit."""
    from nowblock.store import attach_store

    async with central_system(site or make_test_site(1, grid_a=40)) as cs:
        if store is not None:
            attach_store(cs.state, store)
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", cp_id, version,
                             answer=lambda a, p: default_answer(version, a, p)).connect()
        try:
            await s.boot()
            yield cs, s
        finally:
            await s.close()


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
    async with _booted("2.0.1") as (cs, s):
        far = now_iso(datetime.now(timezone.utc) + timedelta(days=400))
        with caplog.at_level(logging.WARNING, logger="nowblock.ocpp.meter"):
            for k in range(5):
                await s.ok("MeterValues", {"evseId": 1, "meterValue": meter_201(energy_wh=10.0 * k, when=far)})
        lines = [r for r in caplog.records if "meter value dated" in r.getMessage()]
        assert len(lines) == 1


async def test_an_implausible_transaction_event_stamp_is_logged_at_most_hourly_a_station(caplog, monkeypatch):
    """A 2.0.1 station a year ahead stamps every TransactionEvent so: one warning, not one each."""
    from nowblock.ocpp import edge

    monkeypatch.setattr(edge, "_warned_at", {}, raising=False)
    async with _booted("2.0.1") as (cs, s):
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


class _Clocked:
    """A raw station of ``version`` whose clock runs ``off[0]`` [s] ahead of ours (changed at will),
    a transaction started on its connector/EVSE 1: ``reading(e)`` sends a stamped meter value
    (register ``e`` [Wh]), ``stop(e)`` ends it."""

    def __init__(self, s, version: str, off: list):
        self.s, self.version, self.off, self.seq, self.tx = s, version, off, 0, None

    def now(self) -> str:
        return now_iso(datetime.now(timezone.utc) + timedelta(seconds=self.off[0]))

    async def event(self, kind: str, trigger: str, **more):
        self.seq += 1
        await self.s.ok("TransactionEvent", {"eventType": kind, "timestamp": self.now(), "seqNo": self.seq,
                                             "triggerReason": trigger, **more})

    async def start(self, e: float):
        if self.version == "1.6":
            r = await self.s.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": int(e),
                                                     "timestamp": self.now()})
            self.tx = r["transactionId"]
        else:
            self.tx = "T1"
            await self.event("Started", "CablePluggedIn", transactionInfo={"transactionId": self.tx},
                             evse={"id": 1, "connectorId": 1}, meterValue=meter_201(energy_wh=e, when=self.now()))

    async def reading(self, e: float):
        if self.version == "1.6":
            await self.s.ok("MeterValues", meter_16(1, self.tx, amps=[16.0] * 3, energy_wh=e, when=self.now()))
        else:
            await self.event("Updated", "MeterValuePeriodic", transactionInfo={"transactionId": self.tx},
                             meterValue=meter_201(amps=[16.0] * 3, energy_wh=e, when=self.now()))

    async def stop(self, e: float):
        if self.version == "1.6":
            await self.s.ok("StopTransaction", {"transactionId": self.tx, "meterStop": int(e),
                                                "timestamp": self.now(), "reason": "Local"})
        else:
            await self.event("Ended", "EVDeparted", transactionInfo={"transactionId": self.tx,
                                                                      "stoppedReason": "Local"})


def _record(store, cp: str, tx: str):
    """(start, stop, stored meter values) of a finished transaction in ``store``."""
    row = store.sessions_history().set_index("session_id").loc[f"{cp}:{tx}"]
    return row["arrival"], row["departure"], store.meter_values(cp, str(tx))


@pytest.mark.parametrize("version,ahead_s", [("1.6", 7200.0), ("2.0.1", 7200.0), ("1.6", -1200.0)])
async def test_a_record_of_a_station_whose_clock_is_off_is_in_our_clock(version, ahead_s, tmp_path):
    """m11 (/tmp/s38/h2/repro1_ahead_record.py): a station 2 h ahead (local time written as UTC) had
    its start and stop judged around our clock, found implausible and dated on arrival, while its
    meter values were stored at its stamps: stored 7200 s after its stop (0 of 6 between start and
    stop; a station 10 minutes ahead: its whole record 600 s in our future). Now every stamp is
    judged around the station's now and dated in ours by its clock offset, the stamp kept beside."""
    from nowblock.store import SqliteStore

    cp = "CP1" if version == "1.6" else "CP2"
    store = SqliteStore(tmp_path / "s.db")
    t0 = datetime.now(timezone.utc)
    async with _booted(version, cp, make_test_site(2), store) as (cs, s):
        st = _Clocked(s, version, [ahead_s])
        await st.start(10000.0)
        for k in range(4):
            await asyncio.sleep(0.2)
            await st.reading(10000.0 + 10.0 * (k + 1))
        await st.stop(10040.0)
    t1 = datetime.now(timezone.utc)
    start, stop, mv = _record(store, cp, st.tx)
    assert t0 <= start <= stop <= t1, (t0, start, stop, t1)  # our clock: when it happened here
    assert len(mv) >= 4 and mv["time"].between(start, stop).all(), (start, stop, list(mv["time"]))
    # The station's own stamps are kept beside ours, its offset apart.
    assert ((mv["station_time"] - mv["time"]).dt.total_seconds() - ahead_s).abs().max() < 2.0
    store.close()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_every_stored_reading_lies_within_its_record_when_the_stations_clock_steps_back(version, tmp_path):
    """A station's clock steps back 600 s just after its car started (NTP; a 1.6 station taking the
    time from a Heartbeat). Until the offset estimate follows, its readings are older by both
    clocks (not applied, stored as late ones); dated by their stamps they lay 600 s before the
    start. Each is stored, dated on arrival, and the record's stop comes after all of them."""
    from nowblock.store import SqliteStore

    cp = "CP1" if version == "1.6" else "CP2"
    store = SqliteStore(tmp_path / "s.db")
    async with _booted(version, cp, make_test_site(2), store) as (cs, s):
        off = [0.0]
        st = _Clocked(s, version, off)
        await st.start(10000.0)
        await st.reading(10010.0)
        off[0] = -600.0
        for k in range(5):
            await asyncio.sleep(0.1)
            await st.reading(10020.0 + 10.0 * k)
        await st.stop(10070.0)
    start, stop, mv = _record(store, cp, st.tx)
    sent = mv[mv["energy_wh"] > 10000.0]
    assert len(sent) == 6, list(sent["energy_wh"])  # every acknowledged reading stored
    assert mv["time"].between(start, stop).all(), (start, stop, list(mv["time"]))
    store.close()
