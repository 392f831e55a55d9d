"""A transaction's end dated before its start, as raw OCPP-J frames from the specifications."""

import asyncio
import json
import logging

import pytest
from websockets.asyncio.client import connect

from nowblock.testing import central_system, make_test_site


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
            assert (t.stop - t.start).total_seconds() == pytest.approx(1800.0)  # its last meter value
            assert t.energy_delivered_kwh >= 0.0
            assert any("before its start" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
