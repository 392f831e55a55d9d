"""A restart on a reused store while a station reboots, with raw OCPP 1.6J frames."""

import asyncio
import json
from datetime import datetime, timedelta, timezone

from websockets.asyncio.client import connect

from nowblock.control import attach_store, restore_state
from nowblock.ocpp.state import LiveState
from nowblock.store import open_store
from nowblock.testing import central_system, eventually, make_test_site


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class _Station16:
    """A 1.6 station written from the specification: it accepts profiles but a TxProfile for a
    transaction it does not run (Rejected), and answers other CALLs as a plain charger does."""

    def __init__(self, ws, name: str, running=()) -> None:
        self.ws, self.name, self.n, self.waiting = ws, name, 0, {}
        self.running, self.profiles = set(running), []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            m = json.loads(msg)
            if m[0] == 2:
                answer = {"status": "Accepted"}
                if m[2] == "SetChargingProfile":
                    prof = m[3]["csChargingProfiles"]
                    if prof["chargingProfilePurpose"] == "TxProfile" and prof.get("transactionId") not in self.running:
                        answer = {"status": "Rejected"}
                    self.profiles.append((prof["chargingProfilePurpose"], prof.get("transactionId"), answer["status"]))
                elif m[2] == "GetConfiguration":
                    answer = {"configurationKey": []}
                elif m[2] not in ("ChangeConfiguration", "ClearChargingProfile"):
                    answer = {"status": "Rejected"}
                await self.ws.send(json.dumps([3, m[1], answer]))
            elif m[1] in self.waiting:
                self.waiting.pop(m[1]).set_result(m)

    async def call(self, action: str, payload: dict):
        self.n += 1
        mid = f"{self.name}-{self.n}"
        self.waiting[mid] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps([2, mid, action, payload]))
        return await asyncio.wait_for(self.waiting[mid], 5)

    async def meter(self, tid: int, amps: float, wh: float):
        values = [{"value": str(amps), "measurand": "Current.Import", "phase": f"L{p}", "unit": "A"} for p in (1, 2, 3)]
        values.append({"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"})
        return await self.call("MeterValues", {"connectorId": 1, "transactionId": tid,
                                               "meterValue": [{"timestamp": _now(), "sampledValue": values}]})


async def test_a_station_that_rebooted_during_a_restart_gets_no_txprofile_for_its_old_transaction(tmp_path):
    """Seen in session 33, reproduced (/tmp/s35/h1/p5/restart.py against `nowblock serve`): after
    a restart on a reused SQLite store, a station that had rebooted meanwhile got TxProfiles for
    its restored transaction id, which it refused (three in 1.5 s), then a fallback default. A
    station that boots runs none of its transactions from before: until it names one again, it
    is held as an offline car's (reserved at what it may draw) and sent nothing; its new
    transaction on that connector closes it."""
    site = make_test_site(2, grid_a=40)
    db = str(tmp_path / "nb.sqlite")
    before = datetime.now(timezone.utc) - timedelta(minutes=10)
    old = LiveState(site)
    store = open_store(db)
    attach_store(old, store)
    for cp, tid in (("CP1", 1), ("CP2", 2)):
        old.on_connect(cp, "1.6")
        old.on_start(cp, 1, tid, start=before, meter_start_wh=0.0)
        old.on_meter(cp, 1, tid, {"current_l1_a": 16.0, "current_l2_a": 16.0, "current_l3_a": 16.0,
                                  "energy_wh": 2000.0}, before + timedelta(minutes=9))
    store.close()  # serve stops here

    state = LiveState(site)
    store = open_store(db)
    attach_store(state, store)
    assert restore_state(state, store) == 2
    try:
        async with central_system(site, control="equal", state=state) as cs:
            async with connect(f"ws://127.0.0.1:{cs.port}/CP1", subprotocols=["ocpp1.6"]) as w1, \
                    connect(f"ws://127.0.0.1:{cs.port}/CP2", subprotocols=["ocpp1.6"]) as w2:
                s1, s2 = _Station16(w1, "a", running={1}), _Station16(w2, "b")
                await s1.meter(1, 16.0, 2500.0)  # CP1 only reconnected: its transaction goes on
                await s2.call("BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"})
                await s2.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"})
                await eventually(lambda: ("TxProfile", 1, "Accepted") in s1.profiles, timeout_s=10)
                await asyncio.sleep(2.5)  # a step or two with CP2 booted and its old transaction restored
                assert [p for p in s2.profiles if p[0] == "TxProfile"] == []
                res = cs.controller.history[-1]
                assert "CP2:2" in res.context.untrusted and res.context.untrusted["CP2:2"] == "offline"
                assert res.context.committed_a["CP2:2"] >= 16.0  # its car may still draw what it drew
                r = await s2.call("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 2000,
                                                       "timestamp": _now()})
                new = r[2]["transactionId"]
                s2.running.add(new)
                assert new > 2  # 1.6 ids continue above the stored ones
                await eventually(lambda: ("TxProfile", new, "Accepted") in s2.profiles, timeout_s=10)
                assert [p for p in s2.profiles if p[2] == "Rejected"] == []
                assert cs.state.transaction("CP2", 2).stop is not None  # closed by the new one
    finally:
        store.close()
