"""The simulation bound: exact where nothing binds, never below what a policy delivers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.block.families import family_scenario
from nowblock.sim.battery import TaperBattery
from nowblock.sim.bound import simulation_bound


def _small(family: str, fraction: float, seed: int, households: int = 0):
    return family_scenario(family, n_charge_points=6, connection_fraction=fraction, days=2, seed=seed,
                           n_households=households)


@pytest.mark.parametrize("battery", [None, TaperBattery(taper_soc=1.0), TaperBattery(taper_soc=0.6, floor_fraction=0.0)])
def test_exact_when_nothing_binds(battery):
    """On a connection no policy can load to its rating the bound is what uncontrolled charging
    delivers: every car's only limits are its maximum, its taper and the step grid."""
    scn = _small("residential_elaad", 1.0, seed=3)
    got = nb.simulate(scn, policy="uncontrolled", battery=battery)
    assert got.metrics["max_overload_a"] == 0.0
    b = simulation_bound(scn, battery=battery)
    assert b.status == "Optimal"
    assert b.demand_met == pytest.approx(got.metrics["demand_met"], abs=1e-7)
    per_session = got.sessions.set_index("session_id")["energy_delivered_kwh"]
    np.testing.assert_allclose(b.energy_kwh.reindex(per_session.index), per_session, atol=1e-5)


def test_taper_costs_energy():
    """A battery that tapers from 20 % on cannot take every request; the bound sees it, and it is
    still exactly what uncontrolled charging gets."""
    scn = _small("residential_elaad", 1.0, seed=3)
    steep = TaperBattery(taper_soc=0.2, floor_fraction=0.0)
    tapered = simulation_bound(scn, battery=steep).demand_met
    ideal = simulation_bound(scn, battery=TaperBattery(taper_soc=1.0)).demand_met
    assert tapered < ideal - 1e-3
    assert tapered == pytest.approx(nb.simulate(scn, policy="uncontrolled", battery=steep).metrics["demand_met"], abs=1e-7)


@pytest.mark.parametrize("family, fraction, seed, households", [
    ("residential_elaad", 0.1, 1, 0), ("workplace_acn", 0.15, 2, 0), ("public_elaad", 0.1, 3, 4),
])
def test_no_policy_beats_the_bound(family, fraction, seed, households):
    """Congested blocks (with and without other load): every controlled policy delivers at most
    the bound, with known and unknown needs, and the best of them comes close to it."""
    scn = _small(family, fraction, seed, households)
    b = simulation_bound(scn)
    assert b.status == "Optimal"
    # Offers in whole amperes within every row: a tighter bound for the same policies.
    stepped = simulation_bound(scn, current_step_a=1.0)
    assert stepped.status == "Optimal" and stepped.demand_met <= b.demand_met + 1e-9
    best = 0.0
    for policy in ("equal", "edf", "llf", "round_robin", "milp"):
        for needs in ("known", "unknown"):
            res = nb.simulate(scn, policy=policy, needs=needs, current_step_a=1.0)
            assert res.metrics["max_overload_a"] == 0.0
            assert res.metrics["demand_met"] <= stepped.demand_met + 1e-6, (policy, needs)
            best = max(best, res.metrics["demand_met"])
    # The bound is not loose: perfect foresight gains little over the best online policy here.
    assert best >= b.demand_met - 0.1


def test_draw_fraction_lowers_the_bound():
    """A car that draws half of what it is offered can get at most that; the bound knows it. (Not
    exact here: the control step lowers the offer of a car that draws less than it is offered,
    and such a car then draws half of the lower offer.)"""
    scn = _small("residential_elaad", 1.0, seed=5)
    half = scn.sessions.assign(draw_fraction=0.5)
    scn_half = dataclasses.replace(scn, sessions=half)
    full = simulation_bound(scn)
    b = simulation_bound(scn_half)
    got = nb.simulate(scn_half, policy="uncontrolled")
    assert b.demand_met < full.demand_met - 0.01
    assert got.metrics["demand_met"] <= b.demand_met + 1e-7


def test_pilot_step_bound_floors_each_row():
    """With 0.4 A of a phase below any whole-ampere offer, the stepped bound loses exactly what
    cannot be offered: one car on a 10.4 A connection, wanting more than it can get."""
    scn = _small("residential_elaad", 0.2, seed=1)
    with pytest.raises(ValueError, match="current_step_a"):
        simulation_bound(scn, current_step_a=0.0)
    one = scn.sessions.iloc[:1].assign(energy_kwh=500.0)
    cp = scn.site.cp_index(one["charge_point_id"])[0]
    fuses = tuple(dataclasses.replace(f, max_current_a=(10.4, 10.4, 10.4)) for f in scn.site.fuses)
    lone = dataclasses.replace(scn, sessions=one, site=dataclasses.replace(scn.site, fuses=fuses), base_load=None)
    ideal = TaperBattery(taper_soc=1.0)
    cont = simulation_bound(lone, battery=ideal)
    stepped = simulation_bound(lone, battery=ideal, current_step_a=1.0)
    assert cp >= 0 and cont.energy_kwh.iloc[0] > 0
    assert stepped.energy_kwh.iloc[0] == pytest.approx(cont.energy_kwh.iloc[0] * 10.0 / 10.4, rel=1e-6)


def test_empty_window():
    """A window without sessions delivers nothing and requests nothing."""
    scn = _small("residential_elaad", 0.2, seed=1)
    t = scn.sessions["arrival"].min() - pd.Timedelta("10D")
    b = simulation_bound(scn, start=t, end=t + pd.Timedelta("1h"))
    assert b.energy_requested_kwh == 0.0 and len(b.energy_kwh) == 0 and b.demand_met == 1.0
