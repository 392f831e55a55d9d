"""The forecaster inside the simulator: the MILP policy with unknown needs, and the base-load hook."""

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.forecast import BaseLoadForecaster, SessionNeedsForecaster
from nowblock.block.scenario import generate_block

pytest.importorskip("highspy")


@pytest.fixture(scope="module")
def block():
    """A congested 24-wallbox block: two weeks to learn habits, then three days to simulate."""
    scn = generate_block(days=17, n_charge_points=24, seed=2, congestion=0.7)
    t0 = pd.Timestamp(scn.meta["start"]).tz_convert("UTC") + pd.Timedelta(days=14)
    return scn, t0


def _run(scn, t0, **kw):
    from nowblock.milp import MilpPolicy

    # 30-min slots over 12 h keep the test short; get_policy("milp") is the same class
    return nb.simulate(scn, MilpPolicy(horizon="12h", step="30min"), start=t0, step="30min", horizon="12h", **kw)


@pytest.mark.slow
def test_milp_delivers_more_with_learnt_needs_than_with_the_naive_fallback(block):
    scn, t0 = block
    past = scn.sessions[scn.sessions["departure"] <= t0]  # only what was over before the window
    est = SessionNeedsForecaster().fit(past)
    learnt = _run(scn, t0, needs="unknown", needs_estimator=est).metrics
    naive = _run(scn, t0, needs="unknown").metrics  # the simulator's FallbackNeedsEstimator
    assert learnt["energy_requested_kwh"] == pytest.approx(naive["energy_requested_kwh"])
    assert learnt["max_overload_a"] == 0.0
    # measured on this block: 0.969 of the demand met with learnt needs, 0.965 with the
    # fallback. Before the MILP shared spare room among cars with guessed needs (issue 16,
    # docs/bench_quality.md) the fallback starved cars and met 0.922 against 0.956 learnt
    # (docs/bench_forecast.md); learning still helps, by less, now that guesses never cap a car.
    assert learnt["demand_met"] > naive["demand_met"]


@pytest.mark.slow
def test_base_load_hook_with_upper_quantile_runs_in_the_simulator(block):
    scn, t0 = block
    short = pd.Timedelta(hours=6)
    hook = BaseLoadForecaster(quantile=0.95)
    calls = []

    class Spy:
        def predict(self, history, now, horizon):
            fc = hook.predict(history, now, horizon)
            calls.append((history.index.max(), now, fc))
            return fc

    res = nb.simulate(scn, "edf", start=t0, end=t0 + short, step="30min", horizon="12h", base_load_forecaster=Spy())
    assert res.metrics["max_overload_a"] == 0.0
    assert len(calls) > 0
    for last_seen, now, fc in calls:
        assert last_seen < now  # the simulator hands over the past only
        assert len(fc) == 48 and np.isfinite(fc.to_numpy()).all()
        truth = scn.base_load.reindex(fc.index)
        assert (fc.iloc[1:] > 0).all() and fc.iloc[1:].mean() > 0.8 * truth.iloc[1:].mean()
