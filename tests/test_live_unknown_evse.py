"""A StatusNotification naming an EVSE the station does not have, as raw OCPP 2.0.1 frames."""

import asyncio

import pytest
from interop.station import RawStation, default_answer, meter_201, now_iso

from nowblock.testing import central_system, eventually, make_test_site


def _one_evse(action, payload):
    """A 2.0.1 station with EVSE 1 only, written from the specification: it rejects a charging
    profile for any other EVSE (an unknown evseId) and answers the rest as a plain station."""
    if action == "SetChargingProfile":
        return {"status": "Accepted" if payload["evseId"] in (0, 1) else "Rejected"}
    return default_answer("2.0.1", action, payload)


def _status(evse: int, status: str) -> dict:
    return {"timestamp": now_iso(), "connectorStatus": status, "evseId": evse, "connectorId": 1}


@pytest.mark.parametrize("status, held", [("Available", False), ("Occupied", True)])
async def test_an_evse_named_only_by_a_status_notification_is_held_for_only_with_a_car_plugged_in(status, held):
    """Found by an outside test (session 33): a StatusNotification for EVSE 5 of a 1-EVSE station
    kept the station-wide fail-safe's room (10 A of a 40 A grid) held for a car that could never
    plug in there, for good; the car at the other station got 30 A instead of its 32 A. An EVSE
    known from a status alone (no transaction, no profile accepted) is held for only while it
    reports a car plugged in (a car there draws what the station applies)."""
    async with central_system(make_test_site(2, grid_a=40), control="equal") as cs:
        s1, s2 = (RawStation(f"ws://127.0.0.1:{cs.port}", cp, "2.0.1", answer=_one_evse) for cp in ("CP1", "CP2"))
        try:
            for s in (s1, s2):
                await s.connect()
                await s.boot()
                await s.ok("StatusNotification", _status(1, "Available"))
            await s1.ok("StatusNotification", _status(5, status))
            await s2.ok("TransactionEvent", {"eventType": "Started", "timestamp": now_iso(), "seqNo": 0,
                                             "triggerReason": "CablePluggedIn",
                                             "transactionInfo": {"transactionId": "T1"},
                                             "evse": {"id": 1, "connectorId": 1}})
            ctl = cs.controller

            def settled():
                res = ctl.history[-1] if ctl.history else None
                return res is not None and "CP2:T1" in res.targets_a.index and not ctl.idle.tasks and res
            await eventually(lambda: cs.state.applied_limit_a("CP1", 1) == 0.0, timeout_s=10)  # its idle default
            await asyncio.sleep(0.5)
            ctl._wake.set()
            await asyncio.sleep(0.5)
            await eventually(settled, timeout_s=10)
            # Its car draws its limit: that reading frees the 2 A a new session is counted at over its
            # limit until a reading tells what it draws over it (nowblock.loop.reserve), in the step it wakes.
            a = float(cs.state.applied_limit_a("CP2", 1))
            n = len(ctl.history)
            await s2.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(), "seqNo": 1,
                                             "triggerReason": "MeterValuePeriodic",
                                             "transactionInfo": {"transactionId": "T1"},
                                             "meterValue": meter_201(amps=[a, a, a])})
            await eventually(lambda: len(ctl.history) > n, timeout_s=10)
            res = await eventually(settled, timeout_s=10)
            idle = res.context.idle_reserved_a
            assert (("CP1", 5) in idle.index and idle[("CP1", 5)] > 0) == held
            want = 40.0 - (idle.sum() if held else 0.0)
            assert res.targets_a["CP2:T1"] == pytest.approx(min(32.0, want))
            assert min(32.0, want) == (30.0 if held else 32.0)  # the fail-safe of 20 A over CP1's two EVSEs
        finally:
            await s1.close()
            await s2.close()
