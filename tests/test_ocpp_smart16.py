"""OCPP 1.6 smart charging as OCA's compliance tool checks it on a central system (TC_056, TC_057,
TC_066, TC_067), against simulated 1.6 chargers over real WebSockets."""

import pytest

from nowblock.ocpp import profiles as pr
from nowblock.testing import central_system, chargers, eventually, make_test_site
from nowblock.sim.chargers import Car

QUIET = dict(failsafe_at_boot=False, backoff_s=0.01, response_timeout_s=2.0)
CP = dict(cp_id="CP1", version="1.6", meter_interval_s=0.1)


async def test_tc056_txdefaultprofile_applies_to_the_next_transaction():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CP) as (sim,):
            rec = await cs.set_default_profile("CP1", 11.76, connector_id=1)
            assert rec.purpose == pr.TX_DEFAULT and rec.attempts == [(pr.TX_DEFAULT, "Accepted")]
            (kind, sent), = sim.received
            assert sent["connector_id"] == 1 and sent["charging_profile_purpose"] == pr.TX_DEFAULT
            assert float(sent["charging_schedule"]["charging_schedule_period"][0]["limit"]) == 11.7  # 0.1 A, floored
            assert "valid_to" in sent and sent["charging_schedule"]["duration"] > 0
            tx = await sim.plug_in(Car())
            assert sim.applied_limit_a() == 11.7
            t = cs.state.transaction("CP1", tx)
            await eventually(lambda: t.current_a[0] == 11.7)
            row = cs.state.snapshot().loc[f"CP1:{tx}"]
            assert row["offered_current_a"] == 11.7 and row["measured_current_a"] == 11.7


async def test_tc057_txprofile_carries_the_transaction_id_and_limits_it():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CP) as (sim,):
            tx = await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            rec = await cs.set_limit("CP1", 1, 14.0)
            assert rec.purpose == pr.TX and rec.accepted_a == 14.0
            sent = sim.received[-1][1]
            assert sent["charging_profile_purpose"] == pr.TX and sent["transaction_id"] == int(tx)
            assert isinstance(sent["transaction_id"], int)  # 1.6 transaction ids are integers
            assert sim.applied_limit_a() == 14.0
            await cs.set_limit("CP1", 1, 9.5)  # replaces the previous TxProfile (same id)
            assert sim.applied_limit_a() == 9.5
            assert sum(p.purpose == pr.TX for p in sim.profiles) == 1
            await sim.unplug()  # a TxProfile ends with its transaction
            assert not any(p.purpose == pr.TX for p in sim.profiles)
            await eventually(lambda: not any(p.purpose == pr.TX for p in cs.state.station("CP1").profiles))


async def test_tc066_get_composite_schedule_returns_floats_matching_stacking():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CP) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            now = pr.utcnow()
            two_periods = pr.build_profile("1.6", pr.TX_DEFAULT, 16.0, connector_id=1, now=now, validity_s=3600)
            two_periods["charging_schedule"]["charging_schedule_period"].append(
                {"start_period": pr.CLOCK_SKEW_S + 1800, "limit": 8.4})  # 30 min from now
            assert await cs.send_raw_profile("CP1", 1, two_periods) == "Accepted"
            assert (await cs.set_station_max("CP1", 12.3)).purpose == pr.MAX_16
            res = await cs.get_composite_schedule("CP1", 1, duration_s=3600)
            assert res["status"] == "Accepted" and res["unit"] == "A"
            limits = [lim for _, lim in res["periods"]]
            assert all(type(x) is float for x in limits)  # the library hands 1.6 limits over as Decimal
            assert limits[0] == 12.3 and 8.4 in limits
            expected = pr.composite_schedule_a(cs.state.station("CP1").profiles, 1, res["start"], 3600,
                                               transaction_id=cs.state.running("CP1")[0].transaction_id,
                                               tx_start=cs.state.running("CP1")[0].start)
            assert [lim for _, lim in expected][:2] == limits[:2]
            assert res["periods"][1][0] == pytest.approx(expected[1][0], abs=1.0)


async def test_tc067_set_three_profiles_clear_by_id_by_criteria_and_all():
    async with central_system(make_test_site(1), **QUIET) as cs:
        async with chargers(cs, CP) as (sim,):
            await sim.plug_in(Car())
            await eventually(lambda: cs.state.running("CP1"))
            a = pr.build_profile("1.6", pr.TX_DEFAULT, 20, connector_id=1, profile_id=11, stack_level=0)
            b = pr.build_profile("1.6", pr.TX_DEFAULT, 16, connector_id=1, profile_id=12, stack_level=1)
            c = pr.build_profile("1.6", pr.MAX_16, 25, connector_id=0, profile_id=13, stack_level=0)
            for conn, p in ((1, a), (1, b), (0, c)):
                assert await cs.send_raw_profile("CP1", conn, p) == "Accepted"
            assert sorted(p.id for p in sim.profiles) == [11, 12, 13]
            assert sim.applied_limit_a() == 16.0
            assert await cs.clear_profiles("CP1", profile_id=12) == "Accepted"
            assert sorted(p.id for p in sim.profiles) == [11, 13] and sim.applied_limit_a() == 20.0
            assert await cs.clear_profiles("CP1", connector_id=1, purpose=pr.TX_DEFAULT, stack_level=0) == "Accepted"
            assert [p.id for p in sim.profiles] == [13] and sim.applied_limit_a() == 25.0
            assert await cs.clear_profiles("CP1") == "Accepted"
            assert sim.profiles == [] and cs.state.station("CP1").profiles == []
            assert await cs.clear_profiles("CP1", profile_id=99) == "Unknown"
            assert sim.applied_limit_a() == 32.0
