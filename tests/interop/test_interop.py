"""Stations written from the OCPP 1.6J / 2.0.1 specifications (raw frames) against the central system.

Each station checks the central system's CALLs and answers against the official JSON
schemas; every test ends by asserting that none violated them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import websockets
from websockets.asyncio.client import connect

from nowblock.ocpp import edge
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.state import LiveState
from nowblock.store import SqliteStore, restore_state
from nowblock.testing import eventually, make_test_site

from .conftest import served
from .station import Err, Late, RawStation, Silence, limit_of, meter_16, meter_201, now_iso


def _url(cs) -> str:
    return f"ws://127.0.0.1:{cs.port}"


def _purposes(st: RawStation) -> list[str]:
    out = []
    for action, p in st.received:
        if action == "SetChargingProfile":
            prof = p.get("csChargingProfiles") or p.get("chargingProfile")
            out.append(prof["chargingProfilePurpose"])
    return out


async def _start16(st: RawStation, connector: int = 1, meter_start: int = 1000, when: str | None = None) -> int:
    await st.ok("StatusNotification", {"connectorId": connector, "errorCode": "NoError", "status": "Preparing"})
    res = await st.ok("StartTransaction", {"connectorId": connector, "idTag": "TAG1", "meterStart": meter_start,
                                           "timestamp": when or now_iso()})
    return res["transactionId"]


def _started201(tid: str, when: str | None = None, seq: int = 0, evse: int = 1) -> dict:
    return {"eventType": "Started", "timestamp": when or now_iso(), "triggerReason": "CablePluggedIn", "seqNo": seq,
            "transactionInfo": {"transactionId": tid}, "evse": {"id": evse, "connectorId": 1}}


async def test_16_optional_calls_not_implemented_numbers_as_strings_optional_fields_omitted(db):
    async with served(db) as (cs, store):
        st = await RawStation(_url(cs), "CP1", "1.6").connect()  # default: GetConfiguration -> NotImplemented
        try:
            await st.boot()  # firmwareVersion, serial numbers ... all omitted
            await eventually(lambda: cs.state.station("CP1").failsafe is not None)
            station = cs.state.station("CP1")
            assert station.failsafe.purpose == pr.TX_DEFAULT
            assert station.refusals["GetConfiguration"].answer == "NotImplemented"
            assert station.refusals["GetConfiguration"].permanent and station.rate_unit == "A"
            assert _purposes(st) == [pr.TX_DEFAULT]
            tx = await _start16(st)
            # numbers as strings (the 1.6 schema's SampledValue.value is a string), unit and context omitted
            await st.ok("MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [{
                "timestamp": now_iso(), "sampledValue": [
                    {"value": "1500"},  # measurand omitted: Energy.Active.Import.Register, Wh
                    {"value": "16.0", "measurand": "Current.Import", "phase": "L1"},
                    {"value": "1.6e1", "measurand": "Current.Import", "phase": "L2"},
                    {"value": " 16 ", "measurand": "Current.Import", "phase": "L3"}]}]})
            snap = cs.state.snapshot()
            assert snap["measured_current_a"].iloc[0] == 16.0 and snap["phases"].iloc[0] == 3
            assert snap["energy_delivered_kwh"].iloc[0] == pytest.approx(0.5)
            mv = store.meter_values("CP1", tx)
            assert len(mv) == 1 and mv["energy_wh"].iloc[0] == 1500.0
            await st.ok("StopTransaction", {"transactionId": tx, "meterStop": 2500, "timestamp": now_iso()})
            assert store.sessions_history()["energy_kwh"].iloc[0] == pytest.approx(1.5)
            assert st.schema_errors == []
        finally:
            await st.close()


async def test_201_get_variables_not_implemented_and_implausible_times_clamped(db):
    async with served(db) as (cs, store):
        st = await RawStation(_url(cs), "CP2", "2.0.1").connect()
        try:
            await st.boot()
            await eventually(lambda: cs.state.station("CP2").failsafe is not None)
            assert cs.state.station("CP2").refusals["GetVariables"].answer == "NotImplemented"
            # a Started dated 0001 (a reset clock): accepted, dated by the central system's clock
            await st.ok("TransactionEvent", _started201("T-1", when="0001-01-01T00:00:00Z"))
            t = cs.state.transaction("CP2", "T-1")
            assert abs((t.start - datetime.now(timezone.utc)).total_seconds()) < 60
            # a departure at the end of time: planned as a week away, never stored raw
            ans = await st.ok("NotifyEVChargingNeeds", {"evseId": 1, "chargingNeeds": {
                "requestedEnergyTransfer": "AC_three_phase", "departureTime": "9999-12-31T23:59:59Z",
                "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 16,
                                         "evMaxVoltage": 400}}})
            assert ans["status"] == "Accepted"
            assert t.departure - datetime.now(timezone.utc) <= timedelta(seconds=edge.MAX_DEPARTURE_S)
            # an Updated dated 9999, meter values in W only and without phases
            await st.ok("TransactionEvent", {
                "eventType": "Updated", "timestamp": "9999-12-31T23:59:59Z", "triggerReason": "MeterValuePeriodic",
                "seqNo": 1, "transactionInfo": {"transactionId": "T-1"},
                "meterValue": meter_201(power_w=11040.0, energy_wh=500.0, when="9999-12-31T23:59:59Z")})
            snap = cs.state.snapshot()  # pandas holds every time in it
            assert snap["measured_current_a"].iloc[0] == pytest.approx(16.0)  # 11,040 W / (230 V x 3)
            assert snap["departure"].iloc[0].year < 2100
            # a restart on this database restores the transaction
            fresh = LiveState(make_test_site(2))
            assert restore_state(fresh, store) == 1 and fresh.restore_skipped == 0
            # unparseable times are refused with a specific error, not InternalError
            bad = await st.call("TransactionEvent", _started201("T-2", when="yesterday"), check=False)
            assert bad[0] == 4 and bad[2] == "FormatViolation", bad
            assert st.schema_errors == []
        finally:
            await st.close()


async def test_16_start_dated_0001_or_9999_does_not_poison_state_store_or_restart(db):
    async with served(db) as (cs, store):
        st = await RawStation(_url(cs), "CP1", "1.6").connect()
        try:
            await st.boot()
            tx1 = await _start16(st, 1, when="0001-01-01T00:00:00Z")
            tx2 = await _start16(st, 2, when="9999-12-31T23:59:59Z")
            await st.ok("MeterValues", meter_16(1, tx1, amps=[10, 10, 10], energy_wh=1200, when="0001-01-01T00:00:00Z"))
            snap = cs.state.snapshot()
            assert len(snap) == 2 and snap["arrival"].min().year == datetime.now(timezone.utc).year
            assert len(store.meter_values("CP1", tx1)) == 1  # acknowledged, so stored (at the server's time)
            stored = store.load_open_transactions()
            assert set(stored["transaction_id"]) == {str(tx1), str(tx2)}
            assert st.schema_errors == []
        finally:
            await st.close()
    # restart: a row written by some other version with a time pandas cannot hold is skipped, not fatal
    con = sqlite3.connect(db)
    for tid, start in (("77", "0001-01-01T00:00:00.000000+00:00"), ("78", "yesterday")):
        con.execute("INSERT INTO transactions (session_id, station_id, transaction_id, connector_id, started_at) "
                    "VALUES (?, 'CP2', ?, 1, ?)", (f"CP2:{tid}", tid, start))
    con.commit()
    con.close()
    state = LiveState(make_test_site(2))
    with SqliteStore(db) as store:
        assert restore_state(state, store) == 2
    assert state.restore_skipped == 2 and state.next_transaction_id > max(tx1, tx2, 78)


async def test_16_rejected_charge_point_max_and_tx_profiles_are_remembered_not_retried(db):
    def answer(action, p):
        if action == "SetChargingProfile":
            purpose = p["csChargingProfiles"]["chargingProfilePurpose"]
            return {"status": "Rejected" if purpose in (pr.MAX_16, pr.TX) else "Accepted"}
        return Err("NotImplemented")

    async with served(db) as (cs, _):
        st = await RawStation(_url(cs), "CP1", "1.6", answer=answer).connect()
        try:
            await st.boot()
            await eventually(lambda: cs.state.station("CP1").failsafe is not None)
            tx = await _start16(st)
            rec = await cs.set_limit("CP1", 1, 12.0)
            assert rec.purpose == pr.TX_DEFAULT and rec.attempts[:2] == [(pr.TX, "Rejected")] * 2
            rec = await cs.set_station_max("CP1", 20.0)
            assert rec.purpose is None
            station = cs.state.station("CP1")
            assert station.refusals[pr.MAX_16].answer == "Rejected"
            assert station.refusals[pr.TX].transaction_id == str(tx)
            assert cs.state.snapshot()["tx_profile_refused"].iloc[0]
            sent = len(st.received)
            rec = await cs.set_limit("CP1", 1, 11.0)  # the next step: no TxProfile retries, straight to TxDefault
            assert rec.attempts == [(pr.TX, "Skipped:Rejected"), (pr.TX_DEFAULT, "Accepted")]
            rec = await cs.set_station_max("CP1", 20.0)
            assert rec.attempts == [(pr.MAX_16, "Skipped:Rejected")]
            assert len(st.received) == sent + 1  # one TxDefault went out, nothing else
            # a reboot forgets: the new firmware may accept
            await st.boot()
            assert cs.state.station("CP1").refusals == {}
            assert st.schema_errors == []
        finally:
            await st.close()


async def test_cars_that_draw_more_or_less_and_the_limit_the_station_reports(db):
    applied = {"CP1": 9.0}

    def answer(action, p):
        if action == "SetChargingProfile":
            return {"status": "Accepted"}
        if action == "GetCompositeSchedule":  # it applies less than it was sent (1.6: Decimal limits)
            return {"status": "Accepted", "connectorId": p["connectorId"], "scheduleStart": now_iso(),
                    "chargingSchedule": {"chargingRateUnit": "A", "duration": p["duration"],
                                         "chargingSchedulePeriod": [{"startPeriod": 0, "limit": applied["CP1"]}]}}
        return Err("NotImplemented")

    async with served(db) as (cs, _):
        over = await RawStation(_url(cs), "CP1", "1.6", answer=answer).connect()
        under = await RawStation(_url(cs), "CP2", "2.0.1").connect()  # GetCompositeSchedule: NotImplemented
        try:
            await over.boot()
            await under.boot()
            tx = await _start16(over)
            await under.ok("TransactionEvent", _started201("U-1"))
            r1 = await cs.set_limit("CP1", 1, 12.5)
            r2 = await cs.set_limit("CP2", 1, 12.5)
            assert r1.purpose == r2.purpose == pr.TX
            tx_profile = [p for a, p in over.received if a == "SetChargingProfile"][-1]["csChargingProfiles"]
            assert tx_profile["transactionId"] == tx and limit_of(tx_profile) == 12.5
            await over.ok("MeterValues", meter_16(1, tx, amps=[20.0, 20.0, 20.0], energy_wh=1100))  # draws more
            await under.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(),
                                                "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                                                "transactionInfo": {"transactionId": "U-1"},
                                                "meterValue": meter_201(amps=[3.0, 3.0, 3.0])})  # draws less
            rep = await cs.read_applied_limit("CP1", 1)
            assert rep.limit_a == 9.0 and isinstance(rep.limit_a, float)
            assert await cs.read_applied_limit("CP2", 1) is None
            assert cs.state.station("CP2").refusals["GetCompositeSchedule"].permanent
            snap = cs.state.snapshot().set_index("charge_point_id")
            assert snap.loc["CP1", "measured_current_a"] > snap.loc["CP1", "offered_current_a"] == 12.5
            assert snap.loc["CP1", "reported_limit_a"] == 9.0
            assert snap.loc["CP2", "measured_current_a"] < snap.loc["CP2", "offered_current_a"]
            assert snap["reported_limit_a"].isna().loc["CP2"]
            n = len(under.received)
            assert await cs.read_applied_limit("CP2", 1) is None and len(under.received) == n  # not asked again
            await cs.set_limit("CP1", 1, 10.0)  # a newer limit makes the old report stale
            assert cs.state.snapshot()["reported_limit_a"].isna().all()
            assert over.schema_errors == [] and under.schema_errors == []
        finally:
            await over.close()
            await under.close()


async def test_callresult_late_or_twice_and_5000_stray_answers(db):
    mode = {"late": True}

    def answer(action, p):
        if action == "SetChargingProfile":
            return Late(1.5, {"status": "Accepted"}) if mode["late"] else Late(0.0, {"status": "Accepted"}, twice=True)
        return Err("NotImplemented")

    async with served(db, failsafe_at_boot=False) as (cs, _):
        st = await RawStation(_url(cs), "CP1", "1.6", answer=answer).connect()
        try:
            await st.boot()
            rec = await cs.set_default_profile("CP1", 10.0)  # answered after the 1 s timeout
            assert rec.purpose is None and rec.attempts[0] == (pr.TX_DEFAULT, "Timeout")
            await asyncio.sleep(1.6)  # the late answers arrive and are dropped
            mode["late"] = False
            rec = await cs.set_default_profile("CP1", 11.0)  # answered twice
            assert rec.purpose == pr.TX_DEFAULT
            for i in range(5000):  # answers to nothing
                await st.send_raw(json.dumps([3, f"stray-{i}", {"status": "Accepted"}]))
            await st.heartbeat()
            rec = await cs.set_default_profile("CP1", 12.0)  # our own calls are still recognised
            assert rec.purpose == pr.TX_DEFAULT and rec.attempts == [(pr.TX_DEFAULT, "Accepted")]
            assert cs.state.station("CP1").stray_responses >= 5000 + 1
            assert cs.connection("CP1")._response_queue.qsize() == 0
            assert st.schema_errors == []
        finally:
            await st.close()


async def test_reconnect_while_the_old_socket_is_half_open(db):
    async with served(db) as (cs, store):
        old = await RawStation(_url(cs), "CP1", "1.6").connect()
        await old.boot()
        tx = await _start16(old)
        await old.ok("MeterValues", meter_16(1, tx, amps=[8, 8, 8], energy_wh=1100))
        old.abandon()  # stops reading: the old socket is open but deaf
        new = await RawStation(_url(cs), "CP1", "1.6").connect()
        try:
            await new.boot()
            await new.ok("MeterValues", meter_16(1, tx, amps=[9, 9, 9], energy_wh=1300))
            assert cs.connection("CP1") is not None and cs.state.station("CP1").connected
            rec = await cs.set_limit("CP1", 1, 7.0)
            assert rec.purpose == pr.TX
            assert _purposes(new)[-1] == pr.TX
            await new.ok("StopTransaction", {"transactionId": tx, "meterStop": 1500, "timestamp": now_iso()})
            assert store.sessions_history()["energy_kwh"].iloc[0] == pytest.approx(0.5)
            assert new.schema_errors == []
            await eventually(lambda: cs.state.station("CP1").connected, 3)  # closing the old one did not unmark it
        finally:
            await new.close()
            await old.close()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_hostile_frames_get_an_answer_and_do_not_poison_the_station(db, version):
    async with served(db, failsafe_at_boot=False, probe_rate_unit=False) as (cs, store):
        st = await RawStation(_url(cs), "CP1", version).connect()
        try:
            fmt = "FormationViolation" if version == "1.6" else "FormatViolation"
            # a lone surrogate: refused cleanly; the station stays usable and the store too
            raw = ('[2,"sur","BootNotification",{"chargePointVendor":"V","chargePointModel":"\\ud83d"}]'
                   if version == "1.6" else
                   '[2,"sur","BootNotification",{"reason":"PowerUp","chargingStation":{"vendorName":"V",'
                   '"model":"\\ud83d"}}]')
            ans = await _raw_call(st, raw, "sur")
            assert ans[0] == 4 and ans[2] == fmt
            await st.boot(**({"chargePointSerialNumber": "Ünïcødé ✓"} if version == "1.6" else {}))
            status = ({"connectorId": 1, "errorCode": "NoError", "status": "Available"} if version == "1.6" else
                      {"timestamp": now_iso(), "connectorStatus": "Available", "evseId": 1, "connectorId": 1})
            await st.ok("StatusNotification", status)
            assert store.stations().set_index("station_id").loc["CP1", "status"] == "Available"
            # deep nesting: answered with the frame's own id
            for depth in (40, 500, 3000, 50_000):
                payload = "[" * depth + "]" * depth
                ans = await _raw_call(st, f'[2,"deep{depth}","DataTransfer",{{"vendorId":"x","data":{payload}}}]',
                                      f"deep{depth}")
                assert ans[0] == 4 and ans[2] == fmt, depth
            # numbers no field can hold, NaN, a connector id in the millions
            for uid, frame in (("big", '[2,"big","Heartbeat",{"x":123456789012345678901234567890}]'),
                               ("nan", '[2,"nan","Heartbeat",{"x":NaN}]'),
                               ("inf", '[2,"inf","Heartbeat",{"x":1e400}]')):
                ans = await _raw_call(st, frame, uid)
                assert ans[0] == 4 and ans[2] == fmt, uid
            conn_status = dict(status, connectorId=10**6) if version == "1.6" else dict(status, evseId=10**6)
            ans = await st.call("StatusNotification", conn_status)
            assert ans[0] == 4 and ans[2] == "PropertyConstraintViolation"
            await st.heartbeat()
            assert st.schema_errors == []
        finally:
            await st.close()


async def _raw_call(st: RawStation, frame: str, uid: str) -> list:
    fut = asyncio.get_running_loop().create_future()
    st._pending[uid] = fut
    await st.send_raw(frame)
    return await asyncio.wait_for(fut, 10)


async def test_oversized_frames_and_hundreds_of_strangers_are_refused_cheaply(db):
    async with served(db, failsafe_at_boot=False, probe_rate_unit=False) as (cs, _):
        big = await RawStation(_url(cs), "CP1", "1.6").connect()
        await big.send_raw('[2,"x","DataTransfer",{"vendorId":"' + "a" * (10 * 2**20) + '"}]')
        await asyncio.wait_for(big.ws.wait_closed(), 10)
        assert big.ws.close_code == 1009  # message too big: closed before being buffered

        async def stranger(i):
            try:
                async with connect(f"{_url(cs)}/GHOST{i}", subprotocols=["ocpp1.6"], open_timeout=20):
                    return "accepted"
            except websockets.exceptions.InvalidStatus as exc:
                return exc.response.status_code

        answers = await asyncio.gather(*(stranger(i) for i in range(300)))
        assert answers == [404] * 300
        ok = await RawStation(_url(cs), "CP2", "1.6").connect()
        try:
            await ok.boot()
            await ok.heartbeat()
        finally:
            await ok.close()
            await big.close()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_station_sampling_only_its_energy_register_is_asked_for_currents(db, version):
    """OCPP 1.6's default MeterValuesSampledData is the energy register alone: without currents the
    loop cannot see a car drawing more than its limit. After the fail-safe, the central system
    adds Current.Import to what the station samples (keeping the rest); a station that already
    samples it is left alone."""
    v16 = version == "1.6"
    sampled = {"CP1": "Energy.Active.Import.Register,SoC", "CP2": "Current.Import,Energy.Active.Import.Register"}

    def answer_for(cp):
        def answer(action, payload):
            if action in ("SetChargingProfile", "ClearChargingProfile"):
                return {"status": "Accepted"}
            if action == "GetConfiguration":  # the rate unit's key and the sampled data's
                values = {"MeterValuesSampledData": sampled[cp], "ChargingScheduleAllowedChargingRateUnit": "Current"}
                return {"configurationKey": [{"key": k, "readonly": False, "value": values[k]}
                                             for k in payload.get("key", []) if k in values]}
            if action == "GetVariables":
                q = payload["getVariableData"][0]
                value = sampled[cp] if q["component"]["name"] == "SampledDataCtrlr" else "A"
                return {"getVariableResult": [{"attributeStatus": "Accepted", "attributeValue": value,
                                               "component": q["component"], "variable": q["variable"]}]}
            if action in ("ChangeConfiguration", "SetVariables"):
                return ({"status": "Accepted"} if v16 else {"setVariableResult": [{
                    "attributeStatus": "Accepted", **{k: payload["setVariableData"][0][k]
                                                      for k in ("component", "variable")}}]})
            return Err("NotImplemented", f"{action} not implemented")
        return answer

    async with served(db) as (cs, _):
        sts = [await RawStation(_url(cs), cp, version, answer=answer_for(cp)).connect() for cp in ("CP1", "CP2")]
        try:
            for st in sts:
                await st.boot()
            change = "ChangeConfiguration" if v16 else "SetVariables"
            await eventually(lambda: any(a == change for a, _ in sts[0].received))
            got = [p for a, p in sts[0].received if a == change]
            want = "Energy.Active.Import.Register,SoC,Current.Import"
            if v16:
                assert got == [{"key": "MeterValuesSampledData", "value": want}]
            else:
                assert [d["attributeValue"] for d in got[0]["setVariableData"]] == [want]
                assert got[0]["setVariableData"][0]["variable"]["name"] == "TxUpdatedMeasurands"
            # the fail-safe went first
            actions = [a for a, _ in sts[0].received]
            assert actions.index("SetChargingProfile") < actions.index(change)
            asked = "MeterValuesSampledData" if v16 else "SampledDataCtrlr"
            await eventually(lambda: any(asked in str(p) for _, p in sts[1].received))
            await asyncio.sleep(0.2)
            assert not any(a == change for a, _ in sts[1].received)  # sampled already: left alone
            assert all(st.schema_errors == [] for st in sts)
        finally:
            for st in sts:
                await st.close()


async def test_a_limit_answered_after_the_time_out_counts_as_possibly_in_force(db):
    # An outside test: a station answering SetChargingProfile in 10 s (past the time-out) applied
    # a 32 A limit the central system then counted at the old one, and the limit went out again,
    # stale, for two minutes (TxProfile retries, then a TxDefault): 76 A on a 64 A fuse.
    def answer(action, p):
        if action == "SetChargingProfile":
            return Late(1.5, {"status": "Accepted"})  # the station applies it: see below
        return Err("NotImplemented")

    async with served(db, failsafe_at_boot=False) as (cs, _):
        st = await RawStation(_url(cs), "CP1", "1.6", answer=answer).connect()
        try:
            await st.boot()
            tx = await _start16(st)
            cs.state.on_profile_accepted("CP1", 1, pr.build_profile("1.6", pr.TX, 10.0, connector_id=1,
                                                                     transaction_id=tx))
            assert cs.state.applied_limit_a("CP1", 1) == 10.0
            rec = await cs.set_limit("CP1", 1, 24.0)  # answered after the 1 s time-out
            # Not sent again, nor as a TxDefault (it would be stale by the time it went out) ...
            assert rec.purpose is None and rec.attempts == [(pr.TX, "Timeout")]
            assert _purposes(st) == [pr.TX]
            # ... and counted at the higher of both: the station may have taken it.
            assert cs.state.applied_limit_a("CP1", 1) == 24.0
            assert cs.state.snapshot().iloc[0]["offered_current_a"] == 24.0
            # A lower limit it accepts replaces it: counted at that one.
            await asyncio.sleep(1.6)
            cs.state.on_profile_accepted("CP1", 1, pr.build_profile("1.6", pr.TX, 8.0, connector_id=1,
                                                                     transaction_id=tx))
            assert cs.state.applied_limit_a("CP1", 1) == 8.0
            assert st.schema_errors == []
        finally:
            await st.close()



async def _two_stations_charging(cs) -> tuple[RawStation, RawStation]:
    """CP1 (2.0.1) with EVSEs 1 and 2 running T-1 and T-2, CP2 with one EVSE running T-3."""
    st = await RawStation(_url(cs), "CP1", "2.0.1").connect()
    one = await RawStation(_url(cs), "CP2", "2.0.1").connect()
    for s, evses in ((st, (1, 2)), (one, (1,))):
        await s.boot()
        for e in evses:
            await s.ok("StatusNotification", {"timestamp": now_iso(), "connectorStatus": "Occupied",
                                              "evseId": e, "connectorId": 1})
    await st.ok("TransactionEvent", _started201("T-1", evse=1))
    await st.ok("TransactionEvent", _started201("T-2", evse=2))
    await one.ok("TransactionEvent", _started201("T-3"))
    return st, one


async def _all_three_still_run(cs, st, store) -> None:
    for cp, tid in (("CP1", "T-1"), ("CP1", "T-2"), ("CP2", "T-3")):
        t = cs.state.transaction(cp, tid)
        assert t is not None and t.stop is None, (cp, tid, t)
    assert sorted(cs.state.snapshot().index) == ["CP1:T-1", "CP1:T-2", "CP2:T-3"]
    assert len(store.sessions_history()) == 0  # nothing was closed ("Superseded")
    # the real car's meter values still count
    await st.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(),
                                     "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                                     "transactionInfo": {"transactionId": "T-1"},
                                     "meterValue": meter_201(amps=[19.0, 19.0, 19.0])})
    assert cs.state.snapshot().loc["CP1:T-1", "measured_current_a"] == 19.0


async def test_201_a_started_on_evse_0_is_refused_and_supersedes_nothing(db):
    """OCPP 2.0.1 TransactionEventRequest: a transaction runs on an EVSE (id > 0; EVSE 0 is the
    station itself). A Started on EVSE 0 was taken as EVSE 1 and closed the transaction running
    there (Superseded): its car kept drawing under its TxProfile while its room was given away."""
    async with served(db, n=2) as (cs, store):
        st, one = await _two_stations_charging(cs)
        try:
            ghost = _started201("GHOST-0")
            ghost["evse"] = {"id": 0}
            ans = await st.call("TransactionEvent", ghost)
            assert ans[0] == 4 and ans[2] == "PropertyConstraintViolation" and "evse.id" in ans[3], ans
            assert cs.state.transaction("CP1", "GHOST-0") is None
            await _all_three_still_run(cs, st, store)
            assert st.schema_errors == [] and one.schema_errors == []
        finally:
            await st.close()
            await one.close()


async def test_201_an_unknown_transaction_naming_no_evse_supersedes_nothing(db):
    """The first TransactionEventRequest of a transaction names its EVSE; an Updated of an unknown
    transaction without ``evse`` (its start was missed, or the station is broken) was opened on
    EVSE 1 and closed the transaction running there. It is opened only where it can only be: the
    station's one EVSE, idle."""
    async with served(db, n=2) as (cs, store):
        st, one = await _two_stations_charging(cs)
        try:
            # with an idToken: answered with its status all the same
            upd = {"eventType": "Updated", "timestamp": now_iso(), "triggerReason": "MeterValuePeriodic",
                   "seqNo": 5, "transactionInfo": {"transactionId": "GHOST-U"},
                   "idToken": {"idToken": "X", "type": "ISO14443"},
                   "meterValue": meter_201(energy_wh=5000.0)}
            assert (await st.ok("TransactionEvent", upd)) == {"idTokenInfo": {"status": "Accepted"}}
            del upd["idToken"]  # a station with one EVSE, a transaction running on it: not opened either
            assert (await one.ok("TransactionEvent", upd)) == {}
            assert cs.state.transaction("CP1", "GHOST-U") is None and cs.state.transaction("CP2", "GHOST-U") is None
            await _all_three_still_run(cs, st, store)
            # ... but on the one EVSE when idle (the central system was down when it started): opened
            await one.ok("TransactionEvent", {**_started201("T-3"), "eventType": "Ended", "seqNo": 1,
                                              "triggerReason": "EVDeparted"})
            assert (await one.ok("TransactionEvent", {**upd, "transactionInfo": {"transactionId": "T-4"}})) == {}
            assert cs.state.transaction("CP2", "T-4").connector_id == 1
            assert st.schema_errors == [] and one.schema_errors == []
        finally:
            await st.close()
            await one.close()


async def _201_and_16(cs) -> tuple[RawStation, RawStation]:
    st = await RawStation(_url(cs), "CP1", "2.0.1").connect()
    old = await RawStation(_url(cs), "CP2", "1.6").connect()
    await st.boot()
    await old.boot()
    return st, old


async def test_a_timestamp_that_is_no_date_time_is_a_format_violation(db):
    """The schemas give every timestamp "format": "date-time" (OCPP-J: FormatViolation, 1.6
    FormationViolation); a StatusNotification dated "yesterday" was answered {}."""
    async with served(db, n=2) as (cs, _):
        st, old = await _201_and_16(cs)
        try:
            bad = {"timestamp": "yesterday", "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
            ans = await st.call("StatusNotification", bad, check=False)
            assert ans[0] == 4 and ans[2] == "FormatViolation", ans
            ans = await old.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                        "status": "Available", "timestamp": "yesterday"}, check=False)
            assert ans[0] == 4 and ans[2] == "FormationViolation", ans
            ans = await st.call("TransactionEvent", _started201("T-9", when="yesterday"), check=False)
            assert ans[0] == 4 and ans[2] == "FormatViolation", ans
            await st.heartbeat()
            assert st.schema_errors == [] and old.schema_errors == []
        finally:
            await st.close()
            await old.close()


async def test_a_message_id_longer_than_36_characters_is_refused(db):
    """OCPP-J: a MessageId is at most 36 characters; a CALL with a longer one is no valid RPC
    request (2.0.1 RpcFrameworkError, 1.6 FormationViolation), answered with the id as sent."""
    async with served(db, n=2) as (cs, _):
        st, old = await _201_and_16(cs)
        try:
            ok36, long40 = "a" * 36, "x" * 40
            assert (await _raw_call(st, f'[2, "{ok36}", "Heartbeat", {{}}]', ok36))[0] == 3
            ans = await _raw_call(st, f'[2, "{long40}", "Heartbeat", {{}}]', long40)
            assert ans[:3] == [4, long40, "RpcFrameworkError"], ans
            ans = await _raw_call(old, f'[2, "{long40}", "Heartbeat", {{}}]', long40)
            assert ans[:3] == [4, long40, "FormationViolation"], ans
            await st.heartbeat()
        finally:
            await st.close()
            await old.close()


async def test_a_refused_frame_is_one_warning_line_not_an_error_traceback(db, caplog):
    """Each PropertyConstraintViolation was logged twice, once at ERROR with a traceback by the
    ocpp library ("Error while handling request")."""
    caplog.set_level(logging.WARNING)
    async with served(db, n=2) as (cs, _):
        st, old = await _201_and_16(cs)
        try:
            caplog.clear()
            ans = await st.call("TransactionEvent", _started201("T-99", evse=99))
            assert ans[0] == 4 and ans[2] == "PropertyConstraintViolation", ans
            ans = await old.call("StartTransaction", {"connectorId": 99, "idTag": "T", "meterStart": 0,
                                                      "timestamp": now_iso()})
            assert ans[0] == 4 and ans[2] == "PropertyConstraintViolation", ans
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.records
            lines = [r for r in caplog.records if "PropertyConstraintViolation" in r.getMessage()]
            assert [r.levelno for r in lines] == [logging.WARNING] * 2, lines
        finally:
            await st.close()
            await old.close()


async def test_a_negative_import_is_no_draw_and_is_skipped(db, caplog):
    """Power.Active.Import of -3000 W was stored as power_kw -3.0, while a negative energy register
    is skipped: a negative import (power or current) is skipped the same way, with a warning,
    and the rest of the message is used."""
    caplog.set_level(logging.WARNING)
    async with served(db, n=2) as (cs, _):
        st, old = await _201_and_16(cs)
        try:
            await st.ok("TransactionEvent", _started201("T-1"))
            await st.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(),
                                             "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                                             "transactionInfo": {"transactionId": "T-1"},
                                             "meterValue": meter_201(power_w=-3000.0, amps=[-13.0], energy_wh=2500.0)})
            row = cs.state.snapshot().loc["CP1:T-1"]
            assert math.isnan(row["power_kw"]) and math.isnan(row["measured_current_a"]), row
            assert cs.state.transaction("CP1", "T-1").energy_register_wh == 2500.0
            assert any("negative import power" in r.getMessage() for r in caplog.records)
            assert st.schema_errors == []
        finally:
            await st.close()
            await old.close()


@pytest.mark.parametrize("with_count", [False, True])
async def test_201_a_car_switching_to_three_phases_is_news_also_with_number_of_phases_used(db, with_count):
    """Found by a review: a TransactionEvent that reports the switch with numberOfPhasesUsed set the
    phase count before the meter value was read, so the rise was not seen and no step woke."""
    async with served(db, failsafe_at_boot=False) as (cs, _):
        seen = []
        cs.state.add_listener(lambda ev: seen.append(ev))
        st = await RawStation(_url(cs), "CP1", "2.0.1").connect()
        try:
            await st.boot()
            await st.ok("TransactionEvent", {"eventType": "Started", "timestamp": now_iso(), "triggerReason": "CablePluggedIn",
                                             "seqNo": 0, "transactionInfo": {"transactionId": "T1"},
                                             "evse": {"id": 1, "connectorId": 1}, "meterValue": meter_201(amps=[16, 0, 0])})
            assert cs.state.transaction("CP1", "T1").phases_used == 1
            upd = {"eventType": "Updated", "timestamp": now_iso(), "triggerReason": "MeterValuePeriodic", "seqNo": 1,
                   "transactionInfo": {"transactionId": "T1"}, "meterValue": meter_201(amps=[16, 16, 16])}
            if with_count:
                upd["numberOfPhasesUsed"] = 3
            await st.ok("TransactionEvent", upd)
            assert cs.state.transaction("CP1", "T1").phases_used == 3
            assert any(ev.kind == "meter" and ev.data.get("phases_up") for ev in seen)
            assert st.schema_errors == []
        finally:
            await st.close()
