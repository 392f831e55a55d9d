"""Profiles reach a station whose clock is off ours: they carry its time (estimated from its own
timestamps), so it applies them (raw frames over 127.0.0.1, stations written from the specs)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from interop.station import RawStation, now_iso
from test_live_fallback_default import K01Station, _served

from nowblock.ocpp import profiles as pr
from nowblock.testing import eventually


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("skew_s", [-3600, 3600])
async def test_a_station_an_hour_off_applies_its_failsafe_and_its_limits(version, skew_s, caplog):
    # H5 s5: a station one hour behind ignored every profile (validFrom = startSchedule = now -
    # 60 s in our clock): its car drew 48 A on a 40 A grid; one hour ahead, its TxProfiles had
    # run out (validTo = now + 900 s) before they arrived.
    caplog.set_level(logging.WARNING)
    async with _served(tx_validity_s=900) as cs:
        station = K01Station(version, reject_tx=False)
        st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", version, answer=station).connect()

        def its_now(s: float = 0.0) -> str:
            return now_iso(pr.utcnow() + timedelta(seconds=skew_s + s))

        try:
            await st.boot()
            await eventually(lambda: cs.state.station("CP1").failsafe is not None)
            # the fail-safe, sent before any timestamp of the station was seen, is in force by its clock
            assert station.applies_a(1, None, offset_s=skew_s) == cs.state.station("CP1").failsafe.accepted_a == 8.0
            if version == "1.6":
                await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing",
                                                   "timestamp": its_now()})
                tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                                       "timestamp": its_now()}))["transactionId"]
            else:
                await st.ok("StatusNotification", {"timestamp": its_now(), "connectorStatus": "Occupied",
                                                   "evseId": 1, "connectorId": 1})
                tx = "T-1"
                await st.ok("TransactionEvent", {"eventType": "Started", "timestamp": its_now(),
                                                 "triggerReason": "CablePluggedIn", "seqNo": 0,
                                                 "transactionInfo": {"transactionId": tx},
                                                 "evse": {"id": 1, "connectorId": 1}})
            await eventually(lambda: cs.state.running("CP1"))
            rec = await cs.set_limit("CP1", 1, 6.0)
            assert rec.purpose == pr.TX
            # by its own clock it applies what was sent, and what the state counts, for the TxProfile's life
            assert station.applies_a(1, tx, offset_s=skew_s) == rec.accepted_a == 6.0
            assert station.applies_a(1, tx, offset_s=skew_s + 850) == 6.0
            assert station.applies_a(1, tx, offset_s=skew_s + 950) == 8.0  # then its fail-safe again
            assert cs.state.station("CP1").clock.offset_s == pytest.approx(skew_s, abs=5)
            assert any("clock" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        finally:
            await st.close()
