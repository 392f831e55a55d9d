"""A station that reconnects without booting, as raw OCPP 2.0.1 frames (the project's RawStation,
frames checked against the official schemas both ways)."""

import asyncio
from contextlib import asynccontextmanager

from interop.station import RawStation, default_answer, limit_of, meter_16, meter_201, now_iso

from nowblock.testing import central_system, eventually, make_test_site


def _tx_profiles(station: RawStation, tx: str) -> list[dict]:
    return [p["chargingProfile"] for a, p in station.received if a == "SetChargingProfile"
            and p["chargingProfile"]["chargingProfilePurpose"] == "TxProfile"
            and p["chargingProfile"].get("transactionId") == tx]


@asynccontextmanager
async def t1_dropped_and_back(cs):
    """A 2.0.1 station CP1 (default answers) booted on ``cs``, running T1 at 16 A until its
    TxProfile came; its connection then drops and it comes back on a new one, sending nothing yet.
    Yields (the first station, closed; the second, connected); both closed on exit."""
    url = f"ws://127.0.0.1:{cs.port}"

    def answer(action, payload):
        return default_answer("2.0.1", action, payload)

    s = await RawStation(url, "CP1", "2.0.1", answer=answer).connect()
    s2 = None
    try:
        await s.boot()
        await s.ok("TransactionEvent", {"eventType": "Started", "timestamp": now_iso(), "seqNo": 0,
                                        "triggerReason": "CablePluggedIn", "transactionInfo": {"transactionId": "T1"},
                                        "evse": {"id": 1, "connectorId": 1},
                                        "meterValue": meter_201(amps=[16.0] * 3, energy_wh=0.0)})
        await eventually(lambda: _tx_profiles(s, "T1"), timeout_s=10)
        await s.close()  # its network drops; it comes back on a new connection
        await eventually(lambda: not cs.state.station("CP1").connected)
        s2 = await RawStation(url, "CP1", "2.0.1", answer=answer).connect()
        yield s, s2
    finally:
        await s.close()
        if s2 is not None:
            await s2.close()


async def test_a_reconnected_station_gets_no_txprofile_until_it_names_its_transaction():
    """A station that connects may have rebooted while it was away, and says so only in the
    BootNotification that follows (/tmp/s36/h2/r1_reconnect_race.py: a step between the connect
    and the boot sent three TxProfiles for a transaction the rebooted station no longer ran,
    Rejected, then a fallback TxDefault). Its running transactions are held as offline cars'
    until it names them; here a TransactionEvent Updated without meter values names it, and the
    limits resume."""
    async with central_system(make_test_site(1, grid_a=40), control="equal") as cs:
        async with t1_dropped_and_back(cs) as (s, s2):  # back on a new connection, no BootNotification
            await eventually(lambda: cs.state.station("CP1").connected)
            ctl = cs.controller
            n = len(ctl.history)
            await eventually(lambda: len(ctl.history) >= n + 2, timeout_s=10)  # two steps since it connected
            await asyncio.sleep(0.5)  # what they sent answered
            assert _tx_profiles(s2, "T1") == []
            snap = cs.state.snapshot()
            assert not snap.loc["CP1:T1", "connected"]  # an offline car's: held at what it may draw
            res = cs.controller.history[-1]
            assert res.context.untrusted.get("CP1:T1") == "offline"
            await s2.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(), "seqNo": 1,
                                             "triggerReason": "ChargingStateChanged",
                                             "transactionInfo": {"transactionId": "T1", "chargingState": "Charging"}})
            assert cs.state.snapshot().loc["CP1:T1", "connected"]
            await eventually(lambda: _tx_profiles(s2, "T1"), timeout_s=10)
            assert s.schema_errors == [] and s2.schema_errors == []


async def test_a_restored_car_is_not_paused_before_its_first_meter_value(tmp_path):
    """Known since session 35 ("a restored car whose first step comes before its first meter value
    is paused about 18 s"; /tmp/s36/h2/r6_restored_pause.py): after a restart, a station that only
    reconnected got 0 A for its restored car (its draw unknown, capped at 0 A) from the step before
    its meter value. Held as an offline car's until the station names it, it gets nothing then, and
    its draw, 16 A, after."""
    from datetime import datetime, timedelta, timezone

    from interop.station import limit_of, meter_16

    from nowblock.control import attach_store, restore_state
    from nowblock.ocpp.state import LiveState
    from nowblock.store import open_store

    site = make_test_site(1, grid_a=40)
    db = str(tmp_path / "nb.sqlite")
    now = datetime.now(timezone.utc)
    old = LiveState(site)
    store = open_store(db)
    attach_store(old, store)
    old.on_connect("CP1", "1.6")
    old.on_start("CP1", 1, 1, start=now - timedelta(minutes=10), meter_start_wh=0.0)
    old.on_meter("CP1", 1, 1, {"current_l1_a": 16.0, "current_l2_a": 16.0, "current_l3_a": 16.0, "energy_wh": 2000.0},
                 now - timedelta(seconds=60))
    store.close()
    state = LiveState(site)
    store = open_store(db)
    attach_store(state, store)
    assert restore_state(state, store) == 1
    try:
        async with central_system(site, control="equal", state=state) as cs:
            def answer(action, payload):
                return {"configurationKey": []} if action == "GetConfiguration" else {"status": "Accepted"}

            def tx_limits(frames):
                return [limit_of(p["csChargingProfiles"]) for a, p in frames if a == "SetChargingProfile"
                        and p["csChargingProfiles"]["chargingProfilePurpose"] == "TxProfile"]

            s = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", answer=answer).connect()
            try:
                await s.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
                ctl = cs.controller
                n = len(ctl.history)
                await eventually(lambda: len(ctl.history) >= n + 2, timeout_s=10)  # two steps before its meter value
                await asyncio.sleep(0.5)
                assert tx_limits(s.received) == []
                await s.ok("MeterValues", meter_16(1, 1, amps=[16.0] * 3, energy_wh=2300.0))
                await eventually(lambda: tx_limits(s.received), timeout_s=10)
                assert min(tx_limits(s.received)) >= 16.0
                assert s.schema_errors == []
            finally:
                await s.close()
    finally:
        store.close()


async def test_an_event_queued_before_a_reboot_does_not_revive_the_old_transaction():
    """/tmp/s36/h2/r5b_queued_event_201.py: a rebooted 2.0.1 station delivered a TransactionEvent
    Updated it had queued while offline (``offline: true``, meter values from before its reboot)
    for its old transaction; named in it, the orphan was revived and the next step sent it three
    TxProfiles (Rejected) and a fallback TxDefault before the queued Ended came. A queued event
    names a transaction the station ran then, not one it runs now."""
    from datetime import datetime, timedelta, timezone

    async with central_system(make_test_site(1, grid_a=40), control="equal") as cs:
        url = f"ws://127.0.0.1:{cs.port}"
        running = {"T1"}

        def answer(action, payload):
            if action == "SetChargingProfile":
                prof = payload["chargingProfile"]
                tx = prof["chargingProfilePurpose"] == "TxProfile" and prof.get("transactionId") not in running
                return {"status": "Rejected" if tx else "Accepted"}
            return default_answer("2.0.1", action, payload)

        def ago(s: float) -> str:
            return now_iso(datetime.now(timezone.utc) - timedelta(seconds=s))

        s = await RawStation(url, "CP1", "2.0.1", answer=answer).connect()
        s2 = None
        try:
            await s.boot()
            await s.ok("TransactionEvent", {"eventType": "Started", "timestamp": ago(60), "seqNo": 0,
                                            "triggerReason": "CablePluggedIn", "transactionInfo": {"transactionId": "T1"},
                                            "evse": {"id": 1, "connectorId": 1},
                                            "meterValue": meter_201(amps=[16.0] * 3, energy_wh=0.0, when=ago(60))})
            await eventually(lambda: _tx_profiles(s, "T1"), timeout_s=10)
            await s.close()  # offline, then it reboots: T1 is gone
            await eventually(lambda: not cs.state.station("CP1").connected)
            running.clear()
            s2 = await RawStation(url, "CP1", "2.0.1", answer=answer).connect()
            await s2.boot()
            await s2.ok("TransactionEvent", {"eventType": "Updated", "timestamp": ago(40), "seqNo": 1, "offline": True,
                                             "triggerReason": "MeterValuePeriodic",
                                             "transactionInfo": {"transactionId": "T1"},
                                             "meterValue": meter_201(amps=[16.0] * 3, energy_wh=500.0, when=ago(40))})
            assert cs.state.transaction("CP1", "T1").orphaned
            ctl = cs.controller
            n = len(ctl.history)
            await eventually(lambda: len(ctl.history) >= n + 2, timeout_s=10)
            await asyncio.sleep(0.5)
            assert _tx_profiles(s2, "T1") == []
            assert ctl.history[-1].context.untrusted.get("CP1:T1") == "offline"  # held at what it may draw
            await s2.ok("TransactionEvent", {"eventType": "Ended", "timestamp": ago(40), "seqNo": 2, "offline": True,
                                             "triggerReason": "AbnormalCondition",
                                             "transactionInfo": {"transactionId": "T1", "stoppedReason": "PowerLoss"}})
            assert cs.state.running("CP1") == []
            assert s.schema_errors == [] and s2.schema_errors == []
        finally:
            await s.close()
            if s2 is not None:
                await s2.close()


def _tx16(station: RawStation, tx: int) -> list[dict]:
    return [p["csChargingProfiles"] for a, p in station.received if a == "SetChargingProfile"
            and p["csChargingProfiles"]["chargingProfilePurpose"] == "TxProfile"
            and p["csChargingProfiles"].get("transactionId") == tx]


async def test_a_16_station_that_only_reconnected_gets_limits_though_its_meter_values_name_no_transaction():
    """Review rev1 M1 (/tmp/s36/m5/m1_orphan_no_txid.py): after a plain reconnect (no reboot) a 1.6
    station whose MeterValues omit transactionId (optional in 1.6) never named its transaction, so
    its car stayed an orphan for good: no TxProfile again, then its 0 A idle default. A station
    that rebooted sends BootNotification before anything else (OCPP 1.6 4.2): its first other CALL
    says it did not, and its car gets limits again. One that does boot keeps it orphaned."""
    async with central_system(make_test_site(2, grid_a=40), control="equal") as cs:
        url = f"ws://127.0.0.1:{cs.port}"

        def answer(action, payload):
            return default_answer("1.6", action, payload)

        s = await RawStation(url, "CP1", answer=answer).connect()
        more = []
        try:
            await s.boot()
            r = await s.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0,
                                                "timestamp": now_iso()})
            tx = r["transactionId"]
            await s.ok("MeterValues", meter_16(1, tx, amps=[16.0] * 3, energy_wh=100.0))
            await eventually(lambda: _tx16(s, tx), timeout_s=10)
            for rebooted in (False, True):
                await (more[-1] if more else s).close()  # its network drops
                await eventually(lambda: not cs.state.station("CP1").connected)
                s2 = await RawStation(url, "CP1", answer=answer).connect()
                more.append(s2)
                await eventually(lambda: cs.state.station("CP1").connected)
                if rebooted:
                    await s2.boot()
                await s2.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"})
                await s2.ok("MeterValues", meter_16(1, None, amps=[16.0] * 3, energy_wh=200.0))
                ctl = cs.controller
                n = len(ctl.history)
                await eventually(lambda: len(ctl.history) >= n + 2, timeout_s=10)
                await asyncio.sleep(0.5)  # what they sent answered
                assert cs.state.transaction("CP1", tx).orphaned is rebooted
                assert (ctl.history[-1].context.untrusted.get(f"CP1:{tx}") == "offline") is rebooted
                if rebooted:
                    assert _tx16(s2, tx) == []
                else:
                    assert min(limit_of(p) for p in _tx16(s2, tx)) >= 16.0
            assert s.schema_errors == [] and all(x.schema_errors == [] for x in more)
        finally:
            await s.close()
            for x in more:
                await x.close()


def test_a_connects_orphans_end_at_its_first_call_or_their_first_meter_value_unless_it_boots():
    """The rule of rev1 M1 in the state alone: a car read before the connect is named again by
    the station's first CALL that is not a BootNotification; one this process has no meter value
    of (restored from the store) by its connector's first meter value after that, with or without
    the transaction's id (its draw unknown, it was paused at 0 A before); after a boot neither."""
    from datetime import datetime, timezone

    from nowblock.ocpp.state import LiveState

    amps = {"current_l1_a": 16.0, "current_l2_a": 16.0, "current_l3_a": 16.0}
    for boots in (False, True):
        state = LiveState(make_test_site(2, grid_a=40))
        now = datetime.now(timezone.utc)
        read = state.on_start("CP1", 1, 1, start=now, meter_start_wh=0.0)
        state.on_meter("CP1", 1, 1, amps, now)
        restored = state.on_start("CP1", 2, 2, start=now, meter_start_wh=0.0)
        state.on_connect("CP1", "1.6")
        assert read.orphaned and restored.orphaned
        if boots:
            state.on_boot("CP1", vendor="V", model="M")
        state.on_status("CP1", 1, "Charging")
        assert read.orphaned is boots and restored.orphaned
        state.on_meter("CP1", 2, None, amps, now)
        assert restored.orphaned is boots


async def test_a_limit_decided_before_a_reconnect_is_not_sent_for_the_orphaned_transaction():
    """Review rev1 L1 (/tmp/s36/m5/l1_orphan_inflight_step.py): the orphan guard lived only in the
    observation, so a step that saw the car before its station's reconnect and sent after it (a
    solve of a few seconds; here set_limit as the dispatcher calls it, naming the transaction)
    sent a rebooted station three TxProfiles for its old transaction (Rejected), then the car's
    16 A as the connector's TxDefault. An orphan is treated as an ended transaction."""
    async with central_system(make_test_site(1, grid_a=40), backoff_s=0.05) as cs:
        url = f"ws://127.0.0.1:{cs.port}"

        def rebooted(action, payload):  # it lost the transaction: refuses TxProfiles for it
            if action == "SetChargingProfile" and payload["csChargingProfiles"]["chargingProfilePurpose"] == "TxProfile":
                return {"status": "Rejected"}
            return default_answer("1.6", action, payload)

        s = await RawStation(url, "CP1", answer=lambda a, p: default_answer("1.6", a, p)).connect()
        s2 = None
        try:
            await s.boot()
            tx = (await s.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0,
                                                  "timestamp": now_iso()}))["transactionId"]
            await s.ok("MeterValues", meter_16(1, tx, amps=[16.0] * 3, energy_wh=0.0))
            await s.close()
            await eventually(lambda: not cs.state.station("CP1").connected)
            s2 = await RawStation(url, "CP1", answer=rebooted).connect()
            await eventually(lambda: cs.state.station("CP1").connected)
            assert cs.state.transaction("CP1", tx).orphaned
            rec = await cs.set_limit("CP1", 1, 16.0, transaction_id=tx)
            assert rec.purpose is None and rec.attempts == [("TxProfile", "Skipped:Orphaned")]
            await asyncio.sleep(0.3)
            assert [a for a, _ in s2.received if a == "SetChargingProfile"] == []
            assert s.schema_errors == [] and s2.schema_errors == []
        finally:
            await s.close()
            if s2 is not None:
                await s2.close()
