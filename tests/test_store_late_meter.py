"""Meter values a station had acknowledged but stamped before the car's last reading (a queued
message replayed after a reconnect, a resent one) are stored, at their stamp, without touching
the live state or waking the controller (m10: before, 1 of 2 acknowledged values was stored)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from interop.station import RawStation, default_answer, meter_16, meter_201, now_iso

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
                if version == "1.6":
                    await s.ok("MeterValues", meter_16(1, tx, amps=amps, energy_wh=energy_wh, when=at[k]))
                else:
                    await s.ok("TransactionEvent", {"eventType": "Updated", "timestamp": at[k], "seqNo": seq,
                                                    "triggerReason": "MeterValuePeriodic",
                                                    "transactionInfo": {"transactionId": tx},
                                                    "meterValue": meter_201(amps=amps, energy_wh=energy_wh,
                                                                            when=at[k])})

            if version == "1.6":
                tx = (await s.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 10000,
                                                      "timestamp": at[0]}))["transactionId"]
            else:
                tx = "T1"
                await s.ok("TransactionEvent", {"eventType": "Started", "timestamp": at[0], "seqNo": 0,
                                                "triggerReason": "CablePluggedIn",
                                                "transactionInfo": {"transactionId": tx},
                                                "evse": {"id": 1, "connectorId": 1},
                                                "meterValue": meter_201(energy_wh=10000.0, when=at[0])})
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
    mv = store.recent_meter_values(base - timedelta(hours=1))
    # The readings after the start (a 2.0.1 Started event stores its own).
    mv = mv[(mv["transaction_id"] == str(tx)) & (mv["time"] > base + timedelta(minutes=1))]
    assert len(mv) == 2, f"{len(mv)} of 2 acknowledged meter values stored"
    assert list(mv["energy_wh"]) == [11000.0, 12000.0]  # in order, at the station's stamps
    assert list(mv["current_l1_a"]) == [8.0, 10.0]
    assert abs((mv["time"].iloc[0] - mv["time"].iloc[1]).total_seconds() + 300.0) < 0.01
    # The late register neither lowers the energy so far nor adds to it.
    row = store.load_open_transactions().set_index("transaction_id").loc[str(tx)]
    assert row["energy_delivered_kwh"] == pytest.approx(2.0)
    assert row["meter_last_wh"] == pytest.approx(12000.0)
    store.close()
