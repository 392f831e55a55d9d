"""The whole live control step for 50, 200 and 1,000 charging points (pytest-benchmark).

Run on purpose (not part of the default ``pytest``)::

    python -m pytest benchmarks/bench_control.py -p no:cacheprovider -p no:fugue_test \
        --benchmark-columns=median,min,max,rounds -s

One step of :class:`nowblock.control.Controller` = snapshot (live state to cars frame, closed
loop), forecast (base load with the similar-day forecaster on 8 weeks of history, needs of the
cars that did not report them with the session-needs forecaster), optimize (the MILP over 24 h
in 15-min slots, time limit 0.6 x the 48 s solve budget of a 60 s period), dispatch (a TxProfile
per changed limit, and per profile due for refresh: with the default 5-period validity every
profile is re-sent about every third step, built by :func:`nowblock.ocpp.profiles.build_profile` and
recorded as accepted in the live state: the network round trip is left out, see
docs/bench_control.md) and persist (the plan into SQLite). Every charging point has a car;
half of them reported their needs (2.0.1), half did not (1.6). The grid connection is a third
of the wallboxes' total rating, so the block is congested. Between steps (not timed) every car
sends a meter value and the clock moves on by the 60 s period.

The baseline in the same run is the same step with the ``edf`` heuristic instead of the MILP.
``extra_info`` carries the median and p95 [s] of each stage and its share of the step.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from nowblock.control import Controller, attach_store
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.state import DispatchRecord, LiveState
from nowblock.store import open_store
from nowblock.block.scenario import generate_block
from nowblock.block.synth import block_site

STAGES = ("snapshot", "forecast", "optimize", "dispatch", "persist")


class InProcessCentral:
    """The central system's controller API without sockets: chargers accept every profile."""

    failsafe_a: dict = {}  # the controller fills in its fail-safe shares

    def __init__(self, site) -> None:
        self.site = site
        self.state = LiveState(site)

    async def set_limit(self, cp_id, connector_id, current_a, *, validity_s=None):
        t = self.state.running_on(cp_id, connector_id)
        payload = pr.build_profile("2.0.1", pr.TX, current_a, connector_id=connector_id,
                                   validity_s=validity_s or 900, transaction_id=t.transaction_id)
        self.state.on_profile_accepted(cp_id, connector_id, payload)
        rec = DispatchRecord(pr.utcnow(), float(current_a), pr.TX, float(current_a), [("TxProfile", "Accepted")])
        self.state.on_dispatch(cp_id, connector_id, rec)
        return rec

    async def set_default_profile(self, cp_id, current_a, *, connector_id=0, validity_s=None, profile_id=None):
        return DispatchRecord(pr.utcnow(), float(current_a), pr.TX_DEFAULT, float(current_a), [])


@pytest.fixture(scope="module")
def history():
    """Eight weeks of a block's other load and its sessions (for the forecasters)."""
    scn = generate_block(n_charge_points=24, days=56)
    from nowblock.forecast.base_load import BaseLoadForecaster
    from nowblock.forecast.needs import SessionNeedsForecaster

    return scn, BaseLoadForecaster(), SessionNeedsForecaster().fit(scn.sessions)


def _block(n: int, history, policy: str, tmp_path):
    scn, base_fc, needs_fc = history
    site = block_site(n, grid_current_a=float(round(n * 20.0 / 3.0)))
    cs = InProcessCentral(site)
    store = open_store(tmp_path / f"bench-{n}-{policy}.sqlite", synchronous="NORMAL")
    attach_store(cs.state, store)
    end = scn.base_load.index[-1] - pd.Timedelta(days=2)
    now = end.tz_convert(site.timezone).normalize().tz_convert("UTC") + pd.Timedelta(hours=18)
    clock = {"now": now}
    base = scn.base_load * (n / 24.0)  # the same households' pattern, as many as the block needs
    rng = np.random.default_rng(7)
    for i, cp in enumerate(site.charge_points):
        version = "2.0.1" if i % 2 else "1.6"
        cs.state.on_connect(cp.id, version)
        start = (now - pd.Timedelta(minutes=float(rng.uniform(5, 300)))).floor("s")
        cs.state.on_start(cp.id, 1, str(i + 1), start=start.to_pydatetime(), meter_start_wh=0.0, id_tag=f"T{i}")
        if version == "2.0.1":
            cs.state.on_needs(cp.id, 1, departure=(now + pd.Timedelta(hours=float(rng.uniform(1, 14)))).floor("s").to_pydatetime(),
                              energy_kwh=float(rng.uniform(5, 40)))
    ctl = Controller(cs, site, policy, store, base_fc, needs_forecaster=needs_fc, base_load_history=base,
                     base_load_meter=lambda t: float(base.asof(t)), period_s=60.0, solve_timeout_s=48.0,
                     clock=lambda: clock["now"])
    return cs, ctl, clock, store


def _feed(cs, clock, ctl) -> None:
    """Every car reports a meter value; the clock moves on by one period (not timed)."""
    clock["now"] = clock["now"] + pd.Timedelta(seconds=60)
    t = clock["now"].to_pydatetime()
    last = ctl.history[-1].current_a if ctl.history else pd.Series(dtype=float)
    for tx in cs.state.running():
        a = float(last.get(tx.session_id, 0.0))
        e = (tx.energy_register_wh or 0.0) + a * 3 * 230.0 / 60.0
        cs.state.on_meter(tx.cp_id, 1, tx.transaction_id,
                          {"energy_wh": e, "current_l1_a": a, "current_l2_a": a, "current_l3_a": a}, t)


def _stats(ctl: Controller) -> dict:
    rows = pd.DataFrame([h.seconds for h in ctl.history[1:]])  # the first step pays one-off fits
    total = rows[list(STAGES)].sum(axis=1)
    out = {"step_median_s": round(float(total.median()), 4), "step_p95_s": round(float(total.quantile(0.95)), 4)}
    for s in STAGES:
        out[f"{s}_median_s"] = round(float(rows[s].median()), 4)
        out[f"{s}_p95_s"] = round(float(rows[s].quantile(0.95)), 4)
        out[f"{s}_share"] = round(float(rows[s].sum() / total.sum()), 3)
    out["policies_used"] = sorted({h.policy for h in ctl.history})
    return out


@pytest.mark.parametrize("policy", ["milp", "edf"])
@pytest.mark.parametrize("n", [50, 200, 1000])
def test_control_step(benchmark, n, policy, history, tmp_path):
    cs, ctl, clock, store = _block(n, history, policy, tmp_path)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(ctl.step("warm-up"))
    rounds = {50: 15, 200: 10, 1000: 6}[n]
    benchmark.pedantic(lambda: loop.run_until_complete(ctl.step("bench")), setup=lambda: _feed(cs, clock, ctl),
                       rounds=rounds, iterations=1, warmup_rounds=0)
    stats = _stats(ctl)
    benchmark.extra_info.update(n_charge_points=n, **stats)
    print(f"\n{policy:>5} n={n:5d} step median {stats['step_median_s']:.3f} s p95 {stats['step_p95_s']:.3f} s  "
          + "  ".join(f"{s} {stats[f'{s}_median_s']:.3f}/{stats[f'{s}_p95_s']:.3f}s ({100 * stats[f'{s}_share']:.0f}%)"
                      for s in STAGES)
          + f"  policies {stats['policies_used']}")
    loop.close()
    store.close()
