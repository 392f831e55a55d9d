"""The fallback chain's TxDefault against stations written from the specs (raw frames over
127.0.0.1): it lives no longer than the TxProfile it stands in for, does not collide with the
idle default (2.0.1 K01.FR.06), and never outlives the transaction it was decided for."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import timedelta

from interop.station import RawStation, now_iso

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually, make_test_site


@asynccontextmanager
async def _served(n: int = 3, **kw):
    cs = CentralSystem(make_test_site(n, grid_a=24.0), **{"port": 0, "backoff_s": 0.01, "response_timeout_s": 2.0,
                                                          "retries": 1, **kw})
    await cs.start()
    try:
        yield cs
    finally:
        await cs.stop()


@asynccontextmanager
async def _booted(version: str, *, k01: bool = True, **kw):
    """A central system (``_served(**kw)``) and station CP1 (a :class:`K01Station`) booted, its
    fail-safe in place: yields (central system, the station's profile logic, the raw station)."""
    async with _served(**kw) as cs:
        station = K01Station(version, k01=k01)
        st = await RawStation(f"ws://127.0.0.1:{cs.port}", "CP1", version, answer=station).connect()
        try:
            await st.boot()
            await eventually(lambda: cs.state.station("CP1").failsafe is not None)
            yield cs, station, st
        finally:
            await st.close()


class K01Station:
    """Holds the profiles it accepted and stacks them as the specs say; rejects TxProfiles
    and, as K01.FR.06 allows, a profile whose purpose, stack level and EVSE equal a held one's
    with another id."""

    def __init__(self, version: str, reject_tx: bool = True, k01: bool = True):
        self.version, self.reject_tx, self.k01, self.held = version, reject_tx, k01, []

    def __call__(self, action, p):
        if action == "SetChargingProfile":
            raw = p.get("csChargingProfiles") or p.get("chargingProfile")
            conn = p.get("connectorId", p.get("evseId"))
            prof = pr.Profile.from_payload(conn, _snake(raw))
            if self.reject_tx and prof.purpose == pr.TX:
                return {"status": "Rejected"}
            if self.k01 and self.version != "1.6" and any(h.id != prof.id and h.purpose == prof.purpose and
                                             h.stack_level == prof.stack_level and h.connector_id == conn
                                             for h in self.held):
                return {"status": "Rejected"}
            self.held = pr.add_profile(self.held, prof)
            return {"status": "Accepted"}
        if action == "ClearChargingProfile":
            pid = p.get("id", p.get("chargingProfileId"))
            self.held, n = pr.clear_matching(self.held, profile_id=pid)
            return {"status": "Accepted" if n else "Unknown"}
        if action == "GetConfiguration":
            return {"configurationKey": []}
        return {"status": "Rejected"} if action.startswith("Get") and self.version != "1.6" else {"status": "Accepted"}

    def applies_a(self, connector_id: int, tx_id, offset_s: float = 0.0):
        return pr.active_limit_a(self.held, connector_id, pr.utcnow() + timedelta(seconds=offset_s),
                                 transaction_id=tx_id)


def _snake(d):
    import re
    if isinstance(d, list):
        return [_snake(x) for x in d]
    if not isinstance(d, dict):
        return d
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): _snake(v) for k, v in d.items()}


def _sent(st: RawStation, purpose: str) -> list[dict]:
    out = []
    for action, p in st.received:
        prof = p.get("csChargingProfiles") or p.get("chargingProfile") if action == "SetChargingProfile" else None
        if prof is not None and prof["chargingProfilePurpose"] == purpose:
            out.append(prof)
    return out


async def _start(st: RawStation, version: str, tid: str = "T-1"):
    if version == "1.6":
        await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"})
        res = await st.ok("StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0,
                                               "timestamp": now_iso()})
        return res["transactionId"]
    await st.ok("TransactionEvent", {"eventType": "Started", "timestamp": now_iso(), "triggerReason": "CablePluggedIn",
                                     "seqNo": 0, "transactionInfo": {"transactionId": tid},
                                     "evse": {"id": 1, "connectorId": 1}})
    return tid


async def _stop(st: RawStation, version: str, tx):
    if version == "1.6":
        await st.ok("StopTransaction", {"transactionId": tx, "meterStop": 10, "timestamp": now_iso()})
    else:
        await st.ok("TransactionEvent", {"eventType": "Ended", "timestamp": now_iso(), "triggerReason": "EVDeparted",
                                         "seqNo": 1, "transactionInfo": {"transactionId": tx}})


import pytest  # noqa: E402


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_fallback_txdefault_expires_with_the_txprofile(version):
    # H5 s16: a 7-day fallback TxDefault of 16 A outlived kill -9 of the central system while
    # the neighbours fell back to their 8 A fail-safe: 32 A on a 24 A grid.
    async with _booted(version, k01=False, tx_validity_s=900) as (cs, station, st):
        tx = await _start(st, version)
        await eventually(lambda: cs.state.running("CP1"))
        rec = await cs.set_limit("CP1", 1, 16.0)
        assert rec.purpose == pr.TX_DEFAULT and station.applies_a(1, tx) == rec.accepted_a == 16.0
        fallback = [p for p in _sent(st, pr.TX_DEFAULT)
                    if p.get("id", p.get("chargingProfileId")) == pr.TX_DEFAULT_ID_BASE + 1][-1]
        assert (pr.parse_time(fallback["validTo"]) - pr.utcnow()).total_seconds() <= 900 + 5
        # once no step refreshes it, the station's fail-safe (8 A: 24 A over 3 points) rules again
        fs = cs.state.station("CP1").failsafe.accepted_a
        assert station.applies_a(1, tx, offset_s=901) == fs == 8.0


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_car_leaving_during_the_dispatch_leaves_no_default_behind(version):
    # H5 s8: the car unplugged while its TxProfile was being retried; its 16 A went out as the
    # connector's 7-day TxDefault, the limit every later car would get with serve gone.
    async with _booted(version) as (cs, station, st):
        tx = await _start(st, version)
        await eventually(lambda: cs.state.running("CP1"))
        plain = station.__call__

        def leaves(action, p):  # the car leaves as its TxProfile is refused
            if action == "SetChargingProfile" and (p.get("csChargingProfiles") or p.get("chargingProfile"))[
                    "chargingProfilePurpose"] == pr.TX:
                asyncio.get_running_loop().create_task(_stop(st, version, tx))
            return plain(action, p)

        st.answer = leaves
        rec = await cs.set_limit("CP1", 1, 16.0, retries=1, backoff_s=0.3)
        assert rec.purpose is None and rec.attempts[-1] == (pr.TX_DEFAULT, "Skipped:TransactionEnded")
        assert not [p for p in station.held if p.connector_id == 1]
        # a limit decided for a transaction that has ended by the time it is sent: nothing goes out,
        # named or not (the step that decided it may not name it)
        sent = len(st.received)
        rec = await cs.set_limit("CP1", 1, 16.0, transaction_id=tx)
        assert rec.purpose is None and len(st.received) == sent
        rec = await cs.set_limit("CP1", 1, 16.0)
        assert rec.purpose is None and len(st.received) == sent
        assert station.applies_a(1, None) == cs.state.station("CP1").failsafe.accepted_a == 8.0


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_fallback_txdefault_is_taken_next_to_the_idle_default_and_counted_as_applied(version):
    # H5 s15b: a 2.0.1 station following K01.FR.06 rejected the fallback (id 101, stack 0,
    # EVSE 1) for the idle default (id 201, stack 0, EVSE 1) it held; the car sat at min(0 A
    # idle default, 11 A station maximum) = 0 A while 11 A were counted. On 1.6 the fallback
    # replaced the idle default, which then no longer guarded the connector after the car.
    async with _booted(version) as (cs, station, st):
        idle = await cs.set_default_profile("CP1", 0.0, connector_id=1, validity_s=900,
                                            profile_id=pr.IDLE_DEFAULT_ID_BASE + 1)
        assert idle.purpose == pr.TX_DEFAULT
        tx = await _start(st, version)
        await eventually(lambda: cs.state.running("CP1"))
        rec = await cs.set_limit("CP1", 1, 16.0)
        assert rec.purpose == pr.TX_DEFAULT
        assert station.applies_a(1, tx) == 16.0 and rec.accepted_a == station.applies_a(1, tx)
        assert cs.state.snapshot()["offered_current_a"].iloc[0] == station.applies_a(1, tx)
        # the car leaves: the fallback is cleared, the idle default guards the connector again
        await _stop(st, version, tx)
        await eventually(lambda: not any(p.id == pr.TX_DEFAULT_ID_BASE + 1 for p in station.held))
        assert station.applies_a(1, None) == 0.0


def test_status_names_the_default_the_station_applies():
    # The API showed the 0 A idle default "in force" beside a fallback of a higher stack level,
    # which is the one the station applies.
    from types import SimpleNamespace

    from nowblock.control.status import _profile_in_force

    now = pr.utcnow()
    held = [pr.Profile.from_payload(c, pr.build_profile("2.0.1", pr.TX_DEFAULT, a, connector_id=c, now=now,
                                                        profile_id=pid, stack_level=lvl))
            for c, a, pid, lvl in ((0, 8.0, 100, 0), (1, 0.0, 201, 0), (1, 16.0, 101, 1))]
    prof, _ = _profile_in_force(SimpleNamespace(profiles=held), 1, "T-1", now, 230.0)
    assert (prof.kind, prof.profile_id, prof.limit_a) == ("fallback_default", 101, 16.0)
    assert pr.active_limit_a(held, 1, now, transaction_id="T-1") == prof.limit_a
    prof, _ = _profile_in_force(SimpleNamespace(profiles=held[:2]), 1, None, now, 230.0)
    assert (prof.kind, prof.limit_a) == ("idle_default", 0.0)
