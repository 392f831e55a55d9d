"""The end of a transaction in the live loop, against stations written from the specifications (raw
frames over 127.0.0.1).

A transaction's end dated before its start, as raw OCPP-J frames from the specifications.

A car leaving while its fallback TxDefault is on the wire leaves no default behind (stations
written from the specs, raw frames over 127.0.0.1).

A car that leaves while its TxProfile is being retried, against stations written from the specs
(the project's RawStation, raw frames over 127.0.0.1, profiles stacked as the specs say).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from websockets.asyncio.client import connect
from interop.station import Late
from test_live_fallback_default import _booted, _start, _stop

from nowblock.testing import central_system, make_test_site, eventually
from nowblock.ocpp import profiles as pr


async def _station(ws):
    """ask(frame) -> the central system's answer to ``frame``; its own CALLs are accepted."""
    async def ask(frame):
        await ws.send(json.dumps(frame))
        while True:
            r = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if r[0] == 2:
                await ws.send(json.dumps([3, r[1], {"status": "Accepted"}]))
                continue
            return r
    return ask


def _energy(wh, when, v16=True):
    value = {"value": str(wh), "unit": "Wh"} if v16 else {"value": float(wh), "unitOfMeasure": {"unit": "Wh"}}
    return {"timestamp": when, "sampledValue": [{"measurand": "Energy.Active.Import.Register", **value}]}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_stop_dated_before_its_start_is_warned_about_and_never_stored_before_the_start(version, caplog):
    """Found by an outside test: a StopTransaction dated an hour before its StartTransaction was
    stored as it came (a session of -1 h, silently). The station gets its normal answer (the
    central system cannot refuse a stop); the stop is stored at the last time known of the
    transaction, with a WARNING naming both times."""
    async with central_system(make_test_site(1)) as cs:
        async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=[f"ocpp{version}"]) as ws:
            ask = await _station(ws)
            if version == "1.6":
                await ask([2, "b", "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"}])
                r = await ask([2, "s", "StartTransaction", {"connectorId": 1, "idTag": "X", "meterStart": 1000,
                                                            "timestamp": "2026-12-07T12:00:00Z"}])
                tid = r[2]["transactionId"]
                await ask([2, "m", "MeterValues", {"connectorId": 1, "transactionId": tid,
                                                   "meterValue": [_energy(3000, "2026-12-07T12:30:00Z")]}])
                with caplog.at_level(logging.WARNING):
                    r = await ask([2, "e", "StopTransaction", {"transactionId": tid, "meterStop": 4000,
                                                              "timestamp": "2026-12-07T11:00:00Z"}])
                assert r == [3, "e", {}]
            else:
                await ask([2, "b", "BootNotification", {"chargingStation": {"model": "m", "vendorName": "v"},
                                                        "reason": "PowerUp"}])
                tid = "T1"
                ev = {"transactionInfo": {"transactionId": tid}, "evse": {"id": 1, "connectorId": 1}}
                await ask([2, "s", "TransactionEvent", {"eventType": "Started", "timestamp": "2026-12-07T12:00:00Z",
                                                        "triggerReason": "CablePluggedIn", "seqNo": 0, **ev,
                                                        "meterValue": [_energy(1000, "2026-12-07T12:00:00Z", False)]}])
                await ask([2, "u", "TransactionEvent", {"eventType": "Updated", "timestamp": "2026-12-07T12:30:00Z",
                                                        "triggerReason": "MeterValuePeriodic", "seqNo": 1, **ev,
                                                        "meterValue": [_energy(3000, "2026-12-07T12:30:00Z", False)]}])
                end = [_energy(500, "2026-12-07T11:00:00Z", False)]  # below the start's register too
                with caplog.at_level(logging.WARNING):
                    r = await ask([2, "e", "TransactionEvent", {"eventType": "Ended",
                                                                "timestamp": "2026-12-07T11:00:00Z",
                                                                "triggerReason": "EVCommunicationLost", "seqNo": 2,
                                                                "transactionInfo": {"transactionId": tid,
                                                                                    "stoppedReason": "EVDisconnected"},
                                                                "meterValue": end}])
                assert r[:2] == [3, "e"] and "idTokenInfo" not in r[2]
            t = cs.state.transaction("CP1", tid)
            assert t.stop is not None and t.stop >= t.start
            # At its last meter value's date; the record is in our clock (its stamps less its
            # clock offset), where this exchange took milliseconds.
            assert t.recorded_until is not None and t.stop == t.recorded_until
            assert (t.stop - t.start).total_seconds() < 5.0
            assert t.energy_delivered_kwh >= 0.0
            assert any("before its start" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_fallback_answered_after_the_car_left_is_cleared(version):
    # Review of 9a894c0/897f892: the TxDefault (id 101, stack level 1) was sent, the car left,
    # then the station's Accepted came: after_stop had already looked and found nothing to clear,
    # and the idle connector applied the departed car's 16 A above its 0 A idle default.
    async with _booted(version) as (cs, station, st):
        idle = await cs.set_default_profile("CP1", 0.0, connector_id=1, validity_s=900,
                                            profile_id=pr.IDLE_DEFAULT_ID_BASE + 1)
        assert idle.purpose == pr.TX_DEFAULT
        tx = await _start(st, version)
        await eventually(lambda: cs.state.running("CP1"))
        plain = station.__call__

        def leaves(action, p):  # the car leaves while the fallback's answer is on its way
            prof = (p.get("csChargingProfiles") or p.get("chargingProfile") or {}) if action == "SetChargingProfile" \
                else {}
            answer = plain(action, p)
            if prof.get("chargingProfilePurpose") == pr.TX_DEFAULT and prof.get("stackLevel") == 1:
                asyncio.get_running_loop().create_task(_stop(st, version, tx))
                return Late(0.3, answer)
            return answer

        st.answer = leaves
        rec = await cs.set_limit("CP1", 1, 16.0, retries=1, backoff_s=0.01)
        assert rec.attempts[-1] == (pr.TX_DEFAULT, "Accepted")  # taken as the car left
        await eventually(lambda: not cs.state.running("CP1"))
        await eventually(lambda: not [p for p in station.held if p.id == pr.TX_DEFAULT_ID_BASE + 1])
        assert station.applies_a(1, None) == 0.0
        assert cs.state.applied_limit_a("CP1", 1) == 0.0


def _tx_sent_at(st) -> list[float]:
    """time.monotonic() of every TxProfile the station received."""
    return [at for (a, p), at in zip(st.received, st.received_at) if a == "SetChargingProfile"
            and (p.get("csChargingProfiles") or p.get("chargingProfile"))["chargingProfilePurpose"] == pr.TX]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_the_retries_of_a_departed_cars_txprofile_do_not_hold_its_connector(version):
    """Review R3 L6 of session 35 (/tmp/s36/h2/r4_stop_behind_chain.py): a step's TxProfile was
    retried (Rejected after 1.5 s, twice more) for a car that had left; after_stop waits for the
    station lock, so the departed car's fallback TxDefault (16 A on the now idle connector) was
    cleared 5.7 s after the stop (~28 s at the default time-outs), and the idle default behind it
    as late. Now no retry goes out once its transaction has ended."""
    async with _booted(version) as (cs, station, st):
        tx = await _start(st, version)
        await eventually(lambda: cs.state.running("CP1"))
        plain = station.__call__
        slow = {"s": 0.0}

        def answer(action, p):
            prof = (p.get("csChargingProfiles") or p.get("chargingProfile") or {}) if action == "SetChargingProfile" else {}
            if prof.get("chargingProfilePurpose") == pr.TX:
                return Late(slow["s"], {"status": "Rejected"}) if slow["s"] else {"status": "Rejected"}
            return plain(action, p)
        st.answer = answer
        await cs.set_limit("CP1", 1, 16.0, retries=0)  # TxProfile refused: the fallback TxDefault 101
        assert station.applies_a(1, tx) == 16.0
        cs.refusal_memory_s = 0.0  # the next step tries a TxProfile again
        slow["s"] = 1.5
        step = asyncio.create_task(cs.set_limit("CP1", 1, 10.0, retries=2, backoff_s=0.5))
        await eventually(lambda: len(_tx_sent_at(st)) == 2)  # the step's first try on the wire
        await _stop(st, version, tx)
        stopped = time.monotonic()
        rec = await asyncio.wait_for(step, 10)
        assert [at for at in _tx_sent_at(st) if at > stopped] == []  # no retry for the car that left
        assert rec.attempts[-2:] == [(pr.TX, "Skipped:TransactionEnded"), (pr.TX_DEFAULT, "Skipped:TransactionEnded")]
        await eventually(lambda: not [p for p in station.held if p.id == pr.TX_DEFAULT_ID_BASE + 1], timeout_s=5)
        assert station.applies_a(1, None) == cs.state.station("CP1").failsafe.accepted_a  # the idle connector's
        assert st.schema_errors == []
