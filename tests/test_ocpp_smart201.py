"""OCPP 2.0.1 smart charging use cases (K01, K02, K03, K05, K10, K15, K43, K60, K53) on the
central system, against simulated 2.0.1 charging stations over real WebSockets."""

import asyncio
from datetime import timedelta

import pytest

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.connection import CallErrorReceived
from nowblock.testing import central_system, chargers, eventually, make_test_site
from nowblock.sim.chargers import Car, Quirks

QUIET = dict(failsafe_at_boot=False, backoff_s=0.01, response_timeout_s=2.0)
CS = dict(cp_id="CP1", version="2.0.1", meter_interval_s=0.1)


async def test_k01_txdefaultprofile():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CS) as (sim,):
            rec = await cs.set_default_profile("CP1", 10.0, connector_id=1)
            assert rec.purpose == pr.TX_DEFAULT
            sent = sim.received[-1][1]
            assert sent["connector_id"] == 1 and isinstance(sent["charging_schedule"], list)
            assert sent["valid_to"] and sent["charging_schedule"][0]["duration"] > 0
            await sim.plug_in(Car())
            assert sim.applied_limit_a() == 10.0


async def test_k02_txprofile_without_transaction_is_rejected():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CS) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            p = pr.build_profile("2.0.1", pr.TX, 10.0, connector_id=1, transaction_id="x")
            del p["transaction_id"]
            assert await cs.send_raw_profile("CP1", 1, p) == "Rejected"
            p["transaction_id"] = "not-the-running-one"
            assert await cs.send_raw_profile("CP1", 1, p) == "Rejected"
            assert not any(q.purpose == pr.TX for q in cs.state.station("CP1").profiles)
            await sim.unplug()
            # with nothing running, a limit is never sent as a TxProfile; just after the car left, not
            # at all (it was decided for that car: as the connector's default it would outlive it)
            sent = len(sim.received)
            rec = await cs.set_limit("CP1", 1, 12.0)
            assert rec.purpose is None and rec.attempts == [(pr.TX, "Skipped:TransactionEnded")]
            assert len(sim.received) == sent


async def test_k03_charging_station_max_profile_caps_every_evse():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, dict(CS, connectors=2)) as (sim,):
            rec = await cs.set_station_max("CP1", 10.0)
            assert rec.purpose == pr.MAX_16
            sent = sim.received[-1][1]
            assert sent["connector_id"] == 0 and sent["charging_profile_purpose"] == pr.MAX_201
            await sim.plug_in(Car(), connector_id=2)
            await eventually(lambda: cs.state.running("CP1"))
            assert (await cs.set_limit("CP1", 2, 20.0)).accepted_a == 10.0  # capped by the station maximum
            assert sim.applied_limit_a(2) == 10.0 and sim.applied_limit_a(1) == 10.0
            assert [p.id for p in sim.profiles if p.purpose == pr.MAX_201] == [pr.STATION_MAX_ID]  # left alone
            # a station maximum on an EVSE is not allowed
            p = pr.build_profile("2.0.1", pr.MAX_201, 5.0, connector_id=1)
            assert await cs.send_raw_profile("CP1", 1, p) == "Rejected"


async def test_k05_clear_charging_profile():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CS) as (sim,):
            await cs.set_default_profile("CP1", 10.0, connector_id=1)
            await cs.set_station_max("CP1", 20.0)
            assert await cs.clear_profiles("CP1", profile_id=pr.TX_DEFAULT_ID_BASE + 1) == "Accepted"
            assert [p.purpose for p in sim.profiles] == [pr.MAX_201]
            assert await cs.clear_profiles("CP1", purpose=pr.MAX_201) == "Accepted"
            assert sim.profiles == [] and cs.state.station("CP1").profiles == []
            assert await cs.clear_profiles("CP1", profile_id=4242) == "Unknown"


async def test_k10_txdefaultprofile_on_evse_0_applies_to_all_evses():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, dict(CS, connectors=2)) as (sim,):
            assert (await cs.set_default_profile("CP1", 8.0, connector_id=0)).purpose == pr.TX_DEFAULT
            await sim.plug_in(Car(), connector_id=1)
            await sim.plug_in(Car(), connector_id=2, id_tag="TAG2")
            assert sim.applied_limit_a(1) == 8.0 and sim.applied_limit_a(2) == 8.0
            await cs.set_default_profile("CP1", 13.0, connector_id=2)  # EVSE-specific default wins there
            assert sim.applied_limit_a(1) == 8.0 and sim.applied_limit_a(2) == 13.0
            await eventually(lambda: len(cs.state.running("CP1")) == 2)
            snap = cs.state.snapshot().set_index("connector_id")
            assert snap.loc[1, "offered_current_a"] == 8.0 and snap.loc[2, "offered_current_a"] == 13.0


async def test_k15_station_answers_not_supported():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, dict(CS, quirks=Quirks(not_supported=True))) as (sim,):
            with pytest.raises(CallErrorReceived) as exc:
                await cs.send_raw_profile("CP1", 0, pr.build_profile("2.0.1", pr.TX_DEFAULT, 10, connector_id=0))
            assert exc.value.code == "NotSupported"
            tx = await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            rec = await cs.set_limit("CP1", 1, 10.0)
            assert rec.purpose is None and {a for _, a in rec.attempts} == {"NotSupported"}
            assert cs.state.snapshot().loc[f"CP1:{tx}", "offered_current_a"] == 32.0
            assert cs.state.station("CP1").dispatch[1] is rec


async def test_k43_get_composite_schedule():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CS) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            await cs.set_limit("CP1", 1, 16.0, validity_s=600)
            await cs.set_default_profile("CP1", 6.0, connector_id=1, validity_s=3600)
            res = await cs.get_composite_schedule("CP1", 1, duration_s=1800)
            assert res["status"] == "Accepted"
            (s0, l0), (s1, l1) = res["periods"]
            assert l0 == 16.0 and l1 == 6.0  # the TxProfile, then the default after it expires
            assert 600 - 5 <= s1 <= 600 + 5
            w = await cs.get_composite_schedule("CP1", 1, duration_s=60, unit="W")
            assert w["unit"] == "W" and w["periods"][0][1] == 16.0 * 3 * 230


async def test_k60_txprofile_on_a_running_transaction():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CS) as (sim,):
            tx = await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            rec = await cs.set_limit("CP1", 1, 18.0)
            assert rec.attempts == [(pr.TX, "Accepted")] and rec.accepted_a == 18.0
            sent = sim.received[-1][1]
            assert sent["transaction_id"] == tx and isinstance(tx, str)
            assert sim.applied_limit_a() == 18.0
            await cs.set_limit("CP1", 1, 7.0)
            assert sim.applied_limit_a() == 7.0 and sum(p.purpose == pr.TX for p in sim.profiles) == 1
            t = cs.state.transaction("CP1", tx)
            await eventually(lambda: t.current_a[0] == 7.0)


async def test_k53_notify_ev_charging_needs_become_the_session_needs():
    async with central_system(make_test_site(2, grid_a=40), control="equal", backoff_s=0.01) as cs:
        events = cs.events()
        async with chargers(cs, CS, dict(CS, cp_id="CP2")) as (sim, other):
            await other.plug_in(Car())
            dep = (pr.utcnow() + timedelta(hours=4)).replace(microsecond=0)
            tx = await sim.plug_in(Car(energy_kwh=18.5, departure=dep, max_current_a=16, phases=1))
            ev = None
            while ev is None or ev.kind != "needs":
                ev = await events.get(timeout=5)
            assert ev.cp_id == "CP1" and ev.transaction_id == tx
            assert ev.data["energy_kwh"] == 18.5 and ev.data["departure"] == dep
            row = cs.state.snapshot().loc[f"CP1:{tx}"]
            assert row["needs_known"] and row["energy_requested_kwh"] == 18.5 and row["departure"] == dep
            assert row["max_current_a"] == 16.0  # the car's own maximum
            # CP1 was first sent 18 A (its 16 A maximum not known yet), then lowered to 16 A: after a
            # lowering only a settled reading (settle_s, 15 s) tells what it draws over its limit, so
            # until then it is counted at 16 + 2 A (loop.reserve) and the other car gets 22 A
            await eventually(lambda: f"CP1:{tx}" in cs.controller.loop.learnt and not cs.controller.loop.reserve_a,
                             timeout_s=15.0 + 5.0)
            # the controller re-plans: the single-phase car is limited to its own maximum and the
            # three-phase car gets what is left on the phase they share (40 - 16 A)
            await eventually(lambda: sim.applied_limit_a() == 16.0 and other.applied_limit_a() == 24.0)
            # needs without a transaction are rejected
            await sim.unplug()
            await asyncio.sleep(0)
            from ocpp.v201 import call as call201
            res = await sim.client.call(call201.NotifyEVChargingNeeds(evse_id=1, charging_needs={
                "requested_energy_transfer": "AC_three_phase", "ac_charging_parameters": {
                    "energy_amount": 1000, "ev_min_current": 6, "ev_max_current": 16, "ev_max_voltage": 400}}))
            assert res.status == "Rejected"
