"""Stations that take watts only: numberPhases is what the car is planned on, the power what it
is known to draw on (the ``ocpp`` library's simulated chargers over 127.0.0.1)."""

from __future__ import annotations

import pytest

from nowblock.ocpp import profiles as pr
from nowblock.sim.chargers import Car, Quirks
from nowblock.testing import central_system, chargers, eventually, make_test_site

FAST = dict(backoff_s=0.01, response_timeout_s=2.0)


def _tx_period(sim) -> pr.Period:
    (p,) = [p for p in sim.profiles if p.purpose == pr.TX]
    assert p.unit == "W"
    return p.periods[0]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_three_phase_car_is_not_told_to_charge_on_one_phase(version):
    # H5 s10: a W-only station got numberPhases 1 for every car: its 3-phase car drew 32 A on
    # L1 alone and was planned on one phase from then on.
    async with central_system(make_test_site(1), **FAST) as cs:
        spec = dict(cp_id="CP1", version=version, meter_interval_s=0.1, quirks=Quirks(rate_unit="W"))
        async with chargers(cs, spec) as (sim,):
            await eventually(lambda: cs.state.station("CP1").rate_unit == "W")
            await sim.plug_in(Car(phases=3))
            t = await eventually(lambda: (cs.state.running("CP1") or [None])[0])
            rec = await cs.set_limit("CP1", 1, 24.0)
            # planned on its three phases; the power of one until its meter shows three (a 1-phase
            # car then cannot draw more than 24 A on its phase)
            q = _tx_period(sim)
            assert q.number_phases == 3 and q.limit in (24.0 * 230.0, 3 * 24.0 * 230.0)
            assert rec.accepted_a == 24.0
            await eventually(lambda: t.phases_used == 3)
            # once its meter shows them, the same limit goes out again on all three, unasked
            await eventually(lambda: _tx_period(sim).limit == 3 * 24.0 * 230.0)
            assert _tx_period(sim).number_phases == 3 and sim.applied_limit_a() == 24.0
            rec = await cs.set_limit("CP1", 1, 10.0)
            q = _tx_period(sim)
            assert q.number_phases == 3 and q.limit == 3 * 10.0 * 230.0
            assert rec.accepted_a == cs.state.applied_limit_a("CP1", 1) == 10.0 and sim.applied_limit_a() == 10.0


async def test_watts_for_a_car_of_unknown_phases_are_counted_on_one_phase():
    # numberPhases 3 with the power of one phase: a 1-phase car draws all of it on its phase,
    # and that is what is counted (not a third of it).
    now = pr.utcnow()
    held = [pr.Profile.from_payload(1, pr.build_profile("1.6", pr.TX, 10.0, connector_id=1, now=now, unit="W",
                                                        phases=1, number_phases=3, transaction_id=7))]
    assert held[0].periods[0].number_phases == 3 and held[0].periods[0].limit == 2300.0
    assert pr.active_limit_a(held, 1, now, transaction_id=7, phases=1) == 10.0
    assert pr.active_limit_a(held, 1, now, transaction_id=7, phases=3) == pytest.approx(10.0 / 3)
