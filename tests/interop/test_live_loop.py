"""The live loop against stations written from the specification (issue 12's first scenario).

Four three-phase charging points (6..16 A) behind one 32 A grid fuse; two OCPP 1.6 and two
2.0.1 stations answer the optional configuration calls with NotImplemented, accept every
SetChargingProfile, start a transaction each and then report a draw of 16 A per phase whatever
they are told: 64 A through a 32 A fuse. The loop (MILP, as ``nowblock serve`` runs it) must
send every transaction its TxProfile within 5 s, send it again with a growing pause while the
car ignores it, escalate to a station maximum, raise an alarm, and report the overload; once the
cars follow, the overload is closed with its size and duration.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from nowblock.control import attach
from nowblock.control.dispatch import Escalation
from nowblock.loop.closed_loop import LoopSettings
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site

from .station import Err, RawStation, limit_of, meter_16, meter_201, now_iso


def _tx_profiles(st: RawStation, purposes=(pr.TX,)) -> list[tuple[float, dict]]:
    out = []
    for t, (action, p) in zip(st.received_at, st.received):
        if action == "SetChargingProfile":
            prof = p.get("csChargingProfiles") or p.get("chargingProfile")
            if prof["chargingProfilePurpose"] in purposes:
                out.append((t, prof))
    return out


async def test_cars_that_ignore_their_limits_are_sent_them_again_escalated_and_reported(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="nowblock.control.controller")
    site = make_test_site(4, grid_a=32.0, max_current_a=16.0)
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1, tx_validity_s=60)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "nb.sqlite"), policy="milp", period_s=1.0, min_replan_s=0.2,
                 solve_timeout_s=2.0, settings=LoopSettings(settle_s=0.5, stale_after_s=10.0),
                 escalation=Escalation(backoff_s=0.5, max_backoff_s=2.0, grace_s=3.0, alarm_s=5.0))
    ctl.warm_up()
    await ctl.start()
    draw = {"a": 16.0}

    def answer(action, p):
        if action == "SetChargingProfile":
            return {"status": "Accepted"}
        return Err("NotImplemented")  # GetConfiguration, GetVariables, GetCompositeSchedule

    versions = ["1.6", "1.6", "2.0.1", "2.0.1"]
    stations = [RawStation(f"ws://127.0.0.1:{cs.port}", f"CP{i + 1}", v, answer=answer) for i, v in enumerate(versions)]
    try:
        for st in stations:
            await st.connect()
            await st.boot()
        started, tx = {}, {}
        for st in stations:
            if st.version == "1.6":
                await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"})
                res = await st.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                       "timestamp": now_iso()})
                tx[st.cp_id] = res["transactionId"]
            else:
                tx[st.cp_id] = f"T-{st.cp_id}"
                await st.ok("TransactionEvent", {"eventType": "Started", "timestamp": now_iso(),
                                                 "triggerReason": "CablePluggedIn", "seqNo": 0,
                                                 "transactionInfo": {"transactionId": tx[st.cp_id]},
                                                 "evse": {"id": 1, "connectorId": 1}})
            started[st.cp_id] = time.monotonic()

        async def report(seq=[1]):  # noqa: B006 - a running sequence number
            for st in stations:
                a = [draw["a"]] * 3
                if st.version == "1.6":
                    await st.ok("MeterValues", {"connectorId": 1, "transactionId": tx[st.cp_id],
                                                "meterValue": meter_16(1, tx[st.cp_id], amps=a)["meterValue"]})
                else:
                    await st.ok("TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(),
                                                     "triggerReason": "MeterValuePeriodic", "seqNo": seq[0],
                                                     "transactionInfo": {"transactionId": tx[st.cp_id]},
                                                     "meterValue": meter_201(amps=a)})
            seq[0] += 1

        t_end = time.monotonic() + 9.0
        while time.monotonic() < t_end:
            await report()
            await asyncio.sleep(0.4)
        # Every transaction got its TxProfile within 5 s of its start, whatever its meter values said.
        for st in stations:
            first = _tx_profiles(st)[0]
            assert first[0] - started[st.cp_id] < 5.0
            assert str(first[1]["transactionId"]) == str(tx[st.cp_id])
        # No limit above a fair share of the 32 A; as they draw 16 A at any limit (twice their
        # 8 A, then more), each was lowered to 0 A: a car drawing more than its limit in
        # proportion would draw its share when sent its share over that ratio.
        sent = [[limit_of(p) for _, p in _tx_profiles(st)] for st in stations]
        assert all(a <= 8.0 for limits in sent for a in limits), sent
        assert [limits[-1] for limits in sent] == [0.0] * 4, sent
        # ... and again while the car ignores it, with a growing pause (not on every 0.4 s meter value).
        counts = [len(_tx_profiles(st)) for st in stations]
        assert all(3 <= n <= 12 for n in counts), counts
        # After the grace: a station maximum; after the alarm time: an alarm per car.
        for st in stations:
            assert _tx_profiles(st, purposes=pr.MAX_PURPOSES), st.cp_id
        not_following = {a["charge_point_id"] for a in ctl.alarms if a["kind"] == "not_following"}
        assert not_following == {"CP1", "CP2", "CP3", "CP4"}
        assert any("overload: fuse grid" in r.getMessage() for r in caplog.records)
        assert all(r["reason"] == "over_draw" for r in ctl.alarms if r["kind"] == "not_following")
        # The cars draw 8 A at last: the overload is closed with its size and duration.
        draw["a"] = 8.0
        await report()

        def closed():
            return [a for a in ctl.alarms if a["kind"] == "overload" and a["fuse_id"] == "grid"]

        await eventually(closed, timeout_s=5.0)
        over = closed()
        assert len(over) == 3 and all(a["worst_a"] == pytest.approx(32.0) and a["duration_s"] > 5.0 for a in over)
        for st in stations:
            assert st.schema_errors == []
    finally:
        for st in stations:
            await st.close()
        await ctl.stop()
        await cs.stop()


def _station_defaults(st: RawStation) -> list[float]:
    """Limits of the TxDefaultProfiles sent for the whole station (connector/EVSE 0), in order."""
    out = []
    for action, p in st.received:
        if action == "SetChargingProfile" and p.get("connectorId", p.get("evseId")) == 0:
            prof = p.get("csChargingProfiles") or p.get("chargingProfile")
            if prof["chargingProfilePurpose"] == pr.TX_DEFAULT:
                out.append(limit_of(prof))
    return out


async def test_the_failsafe_of_a_station_with_several_evses_stays_within_its_share(tmp_path):
    """A TxDefaultProfile on EVSE 0 (2.0.1) / connector 0 (1.6) applies to each EVSE/connector of
    the station, not to their sum. With a 16 A share per charging point a station with two EVSEs
    held 16 A on each: once the central system is gone and the short profiles expire, 16 + 16 on
    the one station. Its fail-safe must be its share over the EVSEs it has (8 A), lowered when
    another EVSE shows up."""
    site = make_test_site(3, grid_a=48.0)  # fail-safe share 16 A per charging point
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1)
    await cs.start()
    ctl = attach(cs, db=str(tmp_path / "nb.sqlite"), policy="equal", period_s=1.0, min_replan_s=0.2)
    await ctl.start()

    def answer(action, p):
        if action in ("SetChargingProfile", "ClearChargingProfile"):
            return {"status": "Accepted"}
        return Err("NotImplemented")

    url = f"ws://127.0.0.1:{cs.port}"
    two = RawStation(url, "CP1", "2.0.1", answer=answer)
    old = RawStation(url, "CP2", "1.6", answer=answer)
    one = RawStation(url, "CP3", "2.0.1", answer=answer)

    async def status(st, evse):
        if st.version == "1.6":
            await st.ok("StatusNotification", {"connectorId": evse, "errorCode": "NoError", "status": "Available"})
        else:
            await st.ok("StatusNotification", {"timestamp": now_iso(), "connectorStatus": "Available",
                                               "evseId": evse, "connectorId": 1})
    try:
        for st, evses in ((two, (1, 2)), (old, (1, 2)), (one, (1,))):
            await st.connect()
            await st.boot()
            for e in evses:
                await status(st, e)
        want = {"CP1": 8.0, "CP2": 8.0, "CP3": 16.0}

        def held():
            return {st.cp_id: (_station_defaults(st) or [None])[-1] for st in (two, old, one)}

        await eventually(lambda: held() == want and not ctl.failsafe_missing(ctl.clock()), timeout_s=15)
        # what all EVSEs may draw under the fail-safe alone: 2 x 8 + 2 x 8 + 16 = 48 A on the 48 A fuse
        assert sum(held()[cp] * n for cp, n in (("CP1", 2), ("CP2", 2), ("CP3", 1))) <= 48.0
        # a second EVSE of CP3 shows up: its fail-safe comes down at once
        await status(one, 2)
        await eventually(lambda: held()["CP3"] == 8.0, timeout_s=10)
        for st in (two, old, one):
            assert st.schema_errors == []
    finally:
        for st in (two, old, one):
            await st.close()
        await ctl.stop()
        await cs.stop()
