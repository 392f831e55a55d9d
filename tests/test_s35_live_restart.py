"""A restart on a reused store while a station reboots, driven by the project's RawStation (raw
OCPP 1.6J frames checked against the official schemas both ways)."""

import asyncio
from datetime import datetime, timedelta, timezone

from interop.station import RawStation, meter_16, now_iso

from nowblock.control import attach_store, restore_state
from nowblock.ocpp.state import LiveState
from nowblock.store import open_store
from nowblock.testing import central_system, eventually, make_test_site


def _station(cs, cp_id: str, running: set) -> RawStation:
    """A 1.6 station as the specification has it: it accepts profiles but a TxProfile for a
    transaction it does not run (Rejected) and answers configuration requests as a plain
    charger does (nothing configured, changes accepted). Its ``profiles`` are (purpose,
    transaction id, answer) of every SetChargingProfile, in order."""
    answered = []

    def answer(action, p):
        if action == "SetChargingProfile":
            prof = p["csChargingProfiles"]
            tx = prof["chargingProfilePurpose"] == "TxProfile" and prof.get("transactionId") not in running
            answered.append((prof["chargingProfilePurpose"], prof.get("transactionId"), "Rejected" if tx else "Accepted"))
            return {"status": answered[-1][2]}
        if action == "GetConfiguration":
            return {"configurationKey": []}
        if action in ("ChangeConfiguration", "ClearChargingProfile"):
            return {"status": "Accepted"}
        return {"status": "Rejected"}

    station = RawStation(f"ws://127.0.0.1:{cs.port}", cp_id, answer=answer)
    station.profiles = answered
    return station


async def test_a_station_that_rebooted_during_a_restart_gets_no_txprofile_for_its_old_transaction(tmp_path):
    """Seen in session 33, reproduced (/tmp/s35/h1/p5/restart.py against `nowblock serve`): after
    a restart on a reused SQLite store, a station that had rebooted meanwhile got TxProfiles for
    its restored transaction id, which it refused (three in 1.5 s), then a fallback default. A
    station that boots runs none of its transactions from before: until it names one again, it
    is held as an offline car's (reserved at what it may draw) and sent nothing; its new
    transaction on that connector closes it. With this station's timing a step runs between
    CP2's connect and its BootNotification (/tmp/s36/h2/r1_reconnect_race.py: 3 TxProfiles for
    restored transaction 2, Rejected): a station that connects runs none of them either until it
    names them."""
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
            running1, running2 = {1}, set()
            s1 = await _station(cs, "CP1", running1).connect()
            s2 = await _station(cs, "CP2", running2).connect()
            try:
                await s1.ok("MeterValues", meter_16(1, 1, amps=[16.0] * 3, energy_wh=2500.0))  # CP1 only reconnected
                await s2.boot()
                await s2.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"})
                await eventually(lambda: ("TxProfile", 1, "Accepted") in s1.profiles, timeout_s=10)
                await asyncio.sleep(2.5)  # a step or two with CP2 booted and its old transaction restored
                assert [p for p in s2.profiles if p[0] == "TxProfile"] == []
                res = cs.controller.history[-1]
                assert "CP2:2" in res.context.untrusted and res.context.untrusted["CP2:2"] == "offline"
                assert res.context.committed_a["CP2:2"] >= 16.0  # its car may still draw what it drew
                r = await s2.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 2000,
                                                     "timestamp": now_iso()})
                new = r["transactionId"]
                running2.add(new)
                assert new > 2  # 1.6 ids continue above the stored ones
                await eventually(lambda: ("TxProfile", new, "Accepted") in s2.profiles, timeout_s=10)
                assert [p for p in s2.profiles if p[2] == "Rejected"] == []
                assert cs.state.transaction("CP2", 2).stop is not None  # closed by the new one
                assert s1.schema_errors == [] and s2.schema_errors == []
            finally:
                await s1.close()
                await s2.close()
    finally:
        store.close()
