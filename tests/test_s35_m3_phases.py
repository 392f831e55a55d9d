"""Stations taking watts: the limit re-sent when a car's phase count changes is the latest one,
sent in turn with the steps' (the ``ocpp`` library's simulated chargers over 127.0.0.1)."""

from __future__ import annotations

import asyncio

import pytest

from nowblock.ocpp import profiles as pr
from nowblock.sim.chargers import Car, Quirks
from nowblock.testing import central_system, chargers, eventually, make_test_site

FAST = dict(backoff_s=0.01, response_timeout_s=2.0)


def _resends(cs) -> list[asyncio.Task]:
    return [t for t in cs._tasks if t.get_name().startswith("phases-known")]


async def test_the_phases_known_resend_never_overwrites_a_lower_limit_in_flight():
    # Review of 8f19584: the re-send took the limit booked when the meter value came (24 A);
    # the step's 6 A, then on the wire, went out first and the old 24 A after it: the station
    # applied 24 A per phase where the step had sent 6 A, and nothing corrected it. (1.6: the
    # simulated 2.0.1 station names its phases in its TransactionEvent Started.)
    async with central_system(make_test_site(1), **FAST) as cs:
        spec = dict(cp_id="CP1", version="1.6", meter_interval_s=600, quirks=Quirks(rate_unit="W"))
        async with chargers(cs, spec) as (sim,):
            await eventually(lambda: cs.state.station("CP1").rate_unit == "W")
            await sim.plug_in(Car(phases=3))
            t = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            await cs.set_limit("CP1", 1, 24.0)
            step = asyncio.create_task(cs.set_limit("CP1", 1, 6.0))
            await eventually(lambda: cs.station_lock("CP1").locked(), every_s=0)
            # its SetChargingProfile is on the wire as the meter shows the car on three phases
            cs.state.on_meter("CP1", 1, t.transaction_id, {"current_l1_a": 8.0, "current_l2_a": 8.0,
                                                          "current_l3_a": 8.0}, cs.state.clock())
            assert t.phases_used == 3
            await step
            await eventually(lambda: not _resends(cs))
            assert sim.applied_limit_a() == pytest.approx(6.0)
            assert cs.state.applied_limit_a("CP1", 1) == pytest.approx(6.0)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_car_falling_to_one_phase_gets_the_power_of_one(version):
    # Review of 8f19584: a car known on 3 phases (6900 W for 10 A) went on on one phase and
    # kept the 3-phase power: the station applied 30 A on its phase, 10 A planned.
    async with central_system(make_test_site(1), **FAST) as cs:
        spec = dict(cp_id="CP1", version=version, meter_interval_s=0.1, quirks=Quirks(rate_unit="W"))
        async with chargers(cs, spec) as (sim,):
            await eventually(lambda: cs.state.station("CP1").rate_unit == "W")
            car = Car(phases=3)
            await sim.plug_in(car)
            t = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            await cs.set_limit("CP1", 1, 24.0)  # 8 A a phase until its meter shows three (then 24 A)
            await eventually(lambda: t.phases_used == 3)
            await eventually(lambda: not _resends(cs))
            await cs.set_limit("CP1", 1, 10.0)
            assert sim.applied_limit_a() == pytest.approx(10.0)
            (p,) = [p for p in sim.profiles if p.purpose == pr.TX]
            assert p.periods[0].limit == 3 * 10.0 * 230.0
            car.phases = 1
            await eventually(lambda: t.phases_used == 1)
            await eventually(lambda: not _resends(cs))
            sent = len(sim.received)
            await asyncio.sleep(0.3)  # a few more meter values: sent once, not again at each
            assert len(sim.received) == sent
            assert sim.applied_limit_a() == pytest.approx(10.0)
            assert cs.state.applied_limit_a("CP1", 1) == pytest.approx(10.0)
            assert max(t.current_a) <= 10.0 + 1e-6
