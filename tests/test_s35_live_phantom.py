"""A StatusNotification naming an EVSE the station does not have, as raw OCPP 2.0.1 frames."""

import asyncio
import json
from datetime import datetime, timezone

import pytest
from websockets.asyncio.client import connect

from nowblock.testing import central_system, eventually, make_test_site


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class _Station:
    """A 2.0.1 station with EVSE 1 only, written from the specification: it rejects a charging
    profile for any other EVSE (K01.FR.xx: an unknown evseId), accepts the others, and answers
    every other CALL Rejected."""

    def __init__(self, ws, name: str) -> None:
        self.ws, self.name, self.n, self.waiting = ws, name, 0, {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            m = json.loads(msg)
            if m[0] == 2:
                ok = m[2] == "SetChargingProfile" and m[3]["evseId"] in (0, 1)
                await self.ws.send(json.dumps([3, m[1], {"status": "Accepted" if ok else "Rejected"}]))
            elif m[1] in self.waiting:
                self.waiting.pop(m[1]).set_result(m)

    async def call(self, action: str, payload: dict):
        self.n += 1
        mid = f"{self.name}-{self.n}"
        self.waiting[mid] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps([2, mid, action, payload]))
        return await asyncio.wait_for(self.waiting[mid], 5)

    async def status(self, evse: int, status: str):
        return await self.call("StatusNotification", {"timestamp": _now(), "connectorStatus": status,
                                                      "evseId": evse, "connectorId": 1})


@pytest.mark.parametrize("status, held", [("Available", False), ("Occupied", True)])
async def test_an_evse_named_only_by_a_status_notification_is_held_for_only_with_a_car_plugged_in(status, held):
    """Found by an outside test (session 33): a StatusNotification for EVSE 5 of a 1-EVSE station
    kept the station-wide fail-safe's room (10 A of a 40 A grid) held for a car that could never
    plug in there, for good; the car at the other station got 30 A instead of its 32 A. An EVSE
    known from a status alone (no transaction, no profile accepted) is held for only while it
    reports a car plugged in (a car there draws what the station applies)."""
    async with central_system(make_test_site(2, grid_a=40), control="equal") as cs:
        async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=["ocpp2.0.1"]) as w1, \
                connect(f"ws://127.0.0.1:{cs.port}/CP2", subprotocols=["ocpp2.0.1"]) as w2:
            s1, s2 = _Station(w1, "a"), _Station(w2, "b")
            for s in (s1, s2):
                await s.call("BootNotification", {"chargingStation": {"model": "m", "vendorName": "v"},
                                                  "reason": "PowerUp"})
                assert (await s.status(1, "Available"))[0] == 3
            assert (await s1.status(5, status))[0] == 3
            await s2.call("TransactionEvent", {"eventType": "Started", "timestamp": _now(), "seqNo": 0,
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
            res = await eventually(settled, timeout_s=10)
            idle = res.context.idle_reserved_a
            assert (("CP1", 5) in idle.index and idle[("CP1", 5)] > 0) == held
            want = 40.0 - (idle.sum() if held else 0.0)
            assert res.targets_a["CP2:T1"] == pytest.approx(min(32.0, want))
            assert min(32.0, want) == (30.0 if held else 32.0)  # the fail-safe of 20 A over CP1's two EVSEs
