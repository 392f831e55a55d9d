"""Meter values a station had acknowledged but stamped before the car's last reading (a queued
message replayed after a reconnect, a resent one) are stored, at their stamp, without touching
the live state or waking the controller (m10: before, 1 of 2 acknowledged values was stored),
dated in our clock within their transaction's record, the station's stamps kept beside."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, default_answer, meter_16, now_iso

from nowblock.store import SqliteStore, attach_store
from nowblock.testing import central_system, make_test_site


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_an_acknowledged_meter_value_stamped_before_the_last_one_is_stored(version, tmp_path):
    cp = "CP1" if version == "1.6" else "CP2"
    base = datetime.now(timezone.utc) - timedelta(minutes=15)
    at = {k: now_iso(base + timedelta(minutes=k)) for k in (0, 5, 10)}  # "12:00", "12:05", "12:10"
    store = SqliteStore(tmp_path / "s.db")
    async with central_system(make_test_site(2)) as cs:
        attach_store(cs.state, store)
        sub = cs.state.subscribe()
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", cp, version,
                             answer=lambda a, p: default_answer(version, a, p)).connect()
        try:
            await s.boot()

            async def meter(k, amps, energy_wh, seq):
                await s.reading(tx, seq, amps=amps, energy_wh=energy_wh, when=at[k])

            tx = await s.start_tx(at[0])
            while not sub._queue.empty():
                sub._queue.get_nowait()
            await meter(10, [10.0] * 3, 12000.0, 1)
            await meter(5, [8.0] * 3, 11000.0, 2)  # queued, replayed late; acknowledged
            seen = []
            while not sub._queue.empty():
                seen.append(sub._queue.get_nowait().kind)
            t = cs.state.transaction(cp, str(tx))
            # The live state keeps the newest reading; the late one wakes no step.
            assert t.energy_register_wh == pytest.approx(12000.0)
            assert t.current_a == pytest.approx((10.0, 10.0, 10.0))
            assert seen.count("meter") == 1 and "late_meter" not in seen, seen
        finally:
            sub.close()
            await s.close()
    every = store.meter_values(cp, str(tx))
    # The readings after the start (a 2.0.1 Started event stores its own), by their stamps.
    mv = every[every["station_time"] > base + timedelta(minutes=1)].sort_values("station_time")
    assert len(mv) == 2, f"{len(mv)} of 2 acknowledged meter values stored"
    assert list(mv["energy_wh"]) == [11000.0, 12000.0]  # the station's stamps kept beside ours
    assert list(mv["current_l1_a"]) == [8.0, 10.0]
    assert abs((mv["station_time"].iloc[0] - mv["station_time"].iloc[1]).total_seconds() + 300.0) < 0.01
    # Dated in our clock within the record (m11): none before its start.
    start = store.load_open_transactions().set_index("transaction_id").loc[str(tx), "arrival"]
    assert (every["time"] >= start).all(), (start, list(every["time"]))
    # The late register neither lowers the energy so far nor adds to it.
    row = store.load_open_transactions().set_index("transaction_id").loc[str(tx)]
    assert row["energy_delivered_kwh"] == pytest.approx(2.0)
    assert row["meter_last_wh"] == pytest.approx(12000.0)
    store.close()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_the_stored_last_register_follows_the_readings_applied_after_the_stations_clock_steps_back(
        version, tmp_path, monkeypatch):
    """/tmp/s38/h2/repro2_sticky_register.py: a station's clock stepped back 600 s mid-transaction
    (NTP, a 1.6 station taking the time from a Heartbeat). Once the offset estimate followed, the
    live state applied its readings (54c225b), but the store moved its last register only for a
    newer stamp: 10,300 Wh stored while 15,300 Wh were read and applied, for as long as the
    station's clock took to pass its old last stamp (600 s). Now the stored last register is the
    live state's, reading after reading; a late one still moves it not (the test above)."""
    from nowblock.ocpp import edge

    off = [0.0]
    monkeypatch.setattr(edge, "station_offset_s", lambda clock: off[0])  # the estimate follows at once
    cp = "CP1" if version == "1.6" else "CP2"

    def st_now():
        return datetime.now(timezone.utc) + timedelta(seconds=off[0])

    store = SqliteStore(tmp_path / "s.db")
    async with central_system(make_test_site(2)) as cs:
        attach_store(cs.state, store)
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", cp, version,
                             answer=lambda a, p: default_answer(version, a, p)).connect()
        try:
            await s.boot()
            tx = await s.start_tx(now_iso(st_now()))

            async def reading(e, seq):
                await s.reading(tx, seq, amps=[16.0] * 3, energy_wh=e, when=now_iso(st_now()))
                return cs.state.transaction(cp, str(tx)).energy_register_wh

            await reading(10300.0, 1)
            off[0] = -600.0  # its clock steps back
            registers = []
            for k in range(3):
                # 1.5 s apart: newer by our clock than the 1 s a reading older by its stamp needs
                # (state.METER_STEP_TOLERANCE_S), so each is applied.
                await asyncio.sleep(1.5)
                live = await reading(11300.0 + 1000.0 * k, 2 + k)
                row = store.load_open_transactions().set_index("transaction_id").loc[str(tx)]
                registers.append((live, row["meter_last_wh"]))
        finally:
            await s.close()
    assert [live for live, _ in registers] == [11300.0, 12300.0, 13300.0]  # applied by the live state
    assert [stored for _, stored in registers] == [live for live, _ in registers], registers
    assert row["energy_delivered_kwh"] == pytest.approx(3.3)
    store.close()


async def test_readings_after_an_upgrade_from_schema_2_of_a_station_ahead_are_all_stored(tmp_path, monkeypatch):
    """Review rev1 F2 (/tmp/s38/rev1/r7_upgrade_ahead.py): a schema-2 file stored a start by the
    station's clock; for a station 300 s ahead it was restored 300 s in our future. Every reading
    after the upgrade was then "before its start", dated at the start, and all but the first
    collided on the meter values' key and were dropped silently (1 of 6 acknowledged stored)."""
    from nowblock.store import restore_state

    ahead = timedelta(seconds=300)

    def snow():
        return datetime.now(timezone.utc) + ahead

    db = tmp_path / "v2.sqlite"
    # The file as schema version 2 wrote it: no station_time, the start at the station's stamp.
    monkeypatch.setattr(SqliteStore, "MIGRATIONS", SqliteStore.MIGRATIONS[:2])
    old = SqliteStore(db)
    assert old.schema_version() == 2
    old.upsert_station("CP1", time=datetime.now(timezone.utc))
    old.start_transaction("CP1", "7", time=snow(), connector_id=1, meter_start_wh=1000.0)
    old.close()
    monkeypatch.undo()
    store = SqliteStore(db)
    assert store.schema_version() == store.latest_schema_version >= 3
    async with central_system(make_test_site(1, grid_a=40)) as cs:
        restore_state(cs.state, store)
        attach_store(cs.state, store)
        t = cs.state.transaction("CP1", "7")
        assert t is not None
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=lambda a, p: default_answer("1.6", a, p)).connect()
        try:  # the station goes on with its car: no reboot
            await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging",
                                              "timestamp": now_iso(snow())})
            for k in range(6):
                await asyncio.sleep(0.1)
                await s.ok("MeterValues", meter_16(1, 7, amps=[10.0] * 3, energy_wh=1010.0 + k, when=now_iso(snow())))
        finally:
            await s.close()
    mv = store.meter_values("CP1", "7")
    assert sorted(mv["energy_wh"]) == [1010.0 + k for k in range(6)]  # every acknowledged reading
    assert mv["time"].is_monotonic_increasing
    assert (mv["time"] <= datetime.now(timezone.utc)).all()  # none in our future
    store.close()


async def test_meter_values_sent_after_the_stop_are_all_stored_within_the_record(tmp_path):
    """Review rev1 F3 (/tmp/s38/rev1/r4_after_stop.py): 1.6 MeterValues naming a transaction after
    its StopTransaction (end-of-transaction samples, distinct stamps) were all dated at its stop
    and collided on the meter values' key: of two, one stored (10021 Wh lost, acknowledged)."""
    store = SqliteStore(tmp_path / "s.db")
    async with central_system(make_test_site(2)) as cs:
        attach_store(cs.state, store)
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=lambda a, p: default_answer("1.6", a, p)).connect()
        try:
            await s.boot()
            tx = (await s.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 10000,
                                                  "timestamp": now_iso()}))["transactionId"]
            await asyncio.sleep(0.1)
            await s.ok("MeterValues", meter_16(1, tx, amps=[10.0] * 3, energy_wh=10010.0))
            await asyncio.sleep(0.1)
            await s.ok("StopTransaction", {"transactionId": tx, "meterStop": 10020, "timestamp": now_iso(),
                                           "reason": "Local"})
            for k in range(3):
                await asyncio.sleep(0.1)
                await s.ok("MeterValues", meter_16(1, tx, amps=[0.0] * 3, energy_wh=10020.0 + k))
        finally:
            await s.close()
    row = store.sessions_history().set_index("session_id").loc[f"CP1:{tx}"]
    mv = store.meter_values("CP1", str(tx))
    assert sorted(mv["energy_wh"]) == [10010.0, 10020.0, 10021.0, 10022.0]  # every acknowledged reading
    assert mv["time"].between(row["arrival"], row["departure"]).all(), (row["arrival"], row["departure"],
                                                                       list(mv["time"]))
    assert list(mv.sort_values("time")["energy_wh"]) == [10010.0, 10020.0, 10021.0, 10022.0]  # in their order
    store.close()


@pytest.mark.parametrize("ahead_s", [0.0, 300.0])
async def test_a_resent_meter_value_is_stored_once(ahead_s, tmp_path):
    """Review rev1 F4 (/tmp/s38/rev1/r1_resend.py): a MeterValues CALL sent again (same stamp, same
    register; its answer was lost) was stored twice: dated in ours by an estimate that moves by
    under a millisecond, the repeat had another date (6 rows for 3 readings). A different reading
    with the same stamp (a station splitting its samples over two messages) is still its own row."""
    store = SqliteStore(tmp_path / "s.db")

    def snow():
        return datetime.now(timezone.utc) + timedelta(seconds=ahead_s)

    async with central_system(make_test_site(2)) as cs:
        attach_store(cs.state, store)
        s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=lambda a, p: default_answer("1.6", a, p)).connect()
        try:
            await s.boot()
            tx = (await s.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 10000,
                                                  "timestamp": now_iso(snow())}))["transactionId"]
            for k in range(3):
                await asyncio.sleep(0.1)
                msg = meter_16(1, tx, amps=[10.0] * 3, energy_wh=10000.0 + 10 * (k + 1), when=now_iso(snow()))
                await s.ok("MeterValues", msg)
                await asyncio.sleep(0.05)
                await s.ok("MeterValues", msg)  # the same CALL again
            when = now_iso(snow())
            await s.ok("MeterValues", meter_16(1, tx, amps=[10.0] * 3, energy_wh=10040.0, when=when))
            await s.ok("MeterValues", meter_16(1, tx, amps=[12.0] * 3, energy_wh=10040.0, when=when))
        finally:
            await s.close()
    mv = store.meter_values("CP1", str(tx))
    assert list(mv.sort_values("time")["energy_wh"]) == [10010.0, 10020.0, 10030.0, 10040.0, 10040.0]
    assert sorted(mv["current_l1_a"].dropna()) == [10.0] * 4 + [12.0]
    store.close()
