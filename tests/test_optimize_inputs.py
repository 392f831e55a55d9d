"""``nowblock.optimize``'s arguments: each wrong one is refused with an error naming it.

Found by an outside tester (session 32): all-NaN prices hung HiGHS past the time limit, an
infinite price ended in an AttributeError, a base load on a timezone-naive index was read as
UTC (and a fuse phase overloaded at the real local peak), an all-NaN base load gave a plan that
ignored the households, and wrong types failed deep in numba or pandas.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.block.scenario import ScenarioError
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.milp import from_sessions
from nowblock.milp.highs_fast import solve_matrix

TZ = "Europe/Berlin"
START = "2026-07-01T18:00+02:00"
RATING_A = 40.0
BASE_KW = 20.0  # 29 A per phase at 230 V: 11 A left for the car on a 40 A connection
TIMES = pd.date_range("2026-07-01 16:00", periods=12, freq="1h", tz=TZ)
# The household peak, 18:00-21:00 local time (16:00-19:00 UTC).
LOAD_HOURS = (TIMES.hour >= 18) & (TIMES.hour < 21)
KW = np.where(LOAD_HOURS, BASE_KW, 0.0)


def _site() -> Site:
    return Site(name="t", fuses=(Fuse("grid", (RATING_A,) * 3),),
                charge_points=(ChargePoint("CP01", "grid", max_current_a=32.0),), voltage_v=230.0, timezone=TZ)


def _sessions(energy_kwh: float = 60.0) -> pd.DataFrame:
    # 60 kWh in 6 h needs 14.5 A on average: more than the 11 A the load hours leave.
    return pd.DataFrame({"session_id": ["x"], "charge_point_id": ["CP01"], "arrival": [pd.Timestamp(START)],
                         "departure": [pd.Timestamp("2026-07-02T00:00+02:00")], "energy_kwh": [energy_kwh]})


def _optimize(**kw) -> nb.Schedule:
    args = dict(start=START, horizon="6h", step="15min", time_limit_s=5.0)
    return nb.optimize(_site(), _sessions(), **{**args, **kw})


def _finishes(fn, seconds: float = 20.0):
    """``fn()`` in a daemon thread: its result, or its exception raised here, or a failure after
    ``seconds`` (NaN in the model used to keep HiGHS running forever, past its time limit)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s: hung")
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_all_nan_prices_are_refused_before_the_solver():
    with pytest.raises(ScenarioError, match="^prices: missing values"):
        _finishes(lambda: _optimize(prices=pd.Series(np.nan, index=TIMES)))


@pytest.mark.parametrize("family", ["cost", "col_hi", "row_hi", "a_value"])
def test_solve_matrix_refuses_nan_in_the_model(family):
    form = from_sessions(_site(), _sessions(), start=START, horizon="2h")
    mf = form.matrix(relax=True)
    bad = getattr(mf, family).copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match=f"NaN.* {family} entries"):
        _finishes(lambda: solve_matrix(form, dataclasses.replace(mf, **{family: bad}), 5.0))


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_price_is_refused_naming_prices(value):
    with pytest.raises(ScenarioError, match=r"^prices: infinite values at 2026-07-01T16:00:00\+02:00"):
        _optimize(prices=pd.Series(value, index=TIMES))


def test_base_load_without_time_zone_is_refused():
    # Read as UTC it put the household peak two hours late: 58 A on a 40 A phase at 18:00.
    naive = pd.Series(KW, index=TIMES.tz_localize(None))
    with pytest.raises(ScenarioError, match="^base_load: time index must be timezone-aware"):
        _optimize(base_load=naive)


def test_aware_base_load_keeps_the_fuse_during_its_hours():
    site, sessions = _site(), _sessions()
    s = _optimize(base_load=pd.Series(KW, index=TIMES))
    x = s.current_a["x"]
    local = x.index.tz_convert(TZ)
    base_kw = np.where((local.hour >= 18) & (local.hour < 21), BASE_KW, 0.0)
    cp = site.cp_index(sessions["charge_point_id"])
    for a, kw in zip(x.to_numpy(), base_kw):
        phases_a = site.fuse_phase_currents_a(np.array([a]), cp, np.array([3]))[0] \
            + site.base_load_phase_current_a(kw)
        assert (phases_a <= RATING_A + 1e-6).all(), (a, kw, phases_a)
    in_load = x[(local.hour >= 18) & (local.hour < 21)]
    assert len(in_load) == 12 and in_load.max() <= RATING_A - BASE_KW * 1000 / 690 + 1e-6
    # The car wants more than the load hours leave: it takes it after them.
    assert x[local.hour >= 21].max() > 20.0


def test_all_nan_base_load_is_refused():
    with pytest.raises(ScenarioError, match="^base_load: missing values"):
        _optimize(base_load=pd.Series(np.nan, index=TIMES))


@pytest.mark.parametrize("kw, error, message", [
    (dict(base_load=10.0), TypeError, "^base_load: expected a pandas Series"),
    (dict(base_load=[10.0] * 12), TypeError, "^base_load: expected a pandas Series"),
    (dict(base_load=KW), TypeError, "^base_load: expected a pandas Series"),
    (dict(base_load=pd.DataFrame({"load": KW}, index=TIMES)), ScenarioError, "^base_load: expected a column 'kw'"),
    (dict(base_load=pd.Series("a lot", index=TIMES)), ScenarioError, "^base_load: expected numbers"),
    (dict(base_load=pd.Series(-np.inf, index=TIMES)), ScenarioError, "^base_load: infinite values"),
    (dict(base_load=pd.Series(KW * 1000, index=TIMES)), ScenarioError, "^base_load: .* expected kW, was it given in W"),
    (dict(prices=pd.DataFrame({"eur": 0.3}, index=TIMES)), ScenarioError, "^prices: expected a column 'eur_per_kwh'"),
    (dict(step="quarter"), ValueError, "^step: cannot read 'quarter' as a duration"),
    (dict(step=15), TypeError, "^step: expected a duration with a unit"),
    (dict(horizon="8"), ValueError, "^horizon: '8' has no unit"),
    (dict(horizon="-2h"), ValueError, "^horizon: must be > 0"),
    (dict(step="-5min"), ValueError, "^step: must be > 0, got '-5min'$"),
    (dict(prices=pd.Series(300.0, index=TIMES)), ScenarioError, "^prices: .* EUR/MWh or ct/kWh"),
    (dict(start="tomorrow"), ValueError, "^start: cannot read 'tomorrow' as a time"),
    (dict(start="2026-07-01T18:00"), ValueError, "^start: must be timezone-aware"),
    (dict(start=pd.NaT), ValueError, r"^start: missing \(NaT\)"),
])
def test_wrong_kinds_are_refused_naming_the_argument(kw, error, message):
    with pytest.raises(error, match=message):
        _optimize(**kw)


def test_base_load_frame_is_read_as_scenario_reads_it():
    series = pd.Series(KW, index=TIMES)
    plan = _optimize(base_load=series).current_a
    for frame in (pd.DataFrame({"kw": KW}, index=TIMES), pd.DataFrame({"time": TIMES, "kw": KW})):
        assert nb.Scenario(_site(), _sessions(), base_load=frame).base_load.equals(
            nb.Scenario(_site(), _sessions(), base_load=series).base_load)
        pd.testing.assert_frame_equal(_optimize(base_load=frame).current_a, plan)


@pytest.mark.parametrize("start", ["9999-01-01T00:00Z", "1600-01-01T00:00Z"])
def test_a_start_outside_the_times_pandas_computes_in_is_refused_naming_start(start):
    """Found by an outside test: ``start="9999-01-01T00:00Z"`` was read, then the slot grid
    overflowed: an OverflowError instead of a clear error."""
    with pytest.raises(ValueError, match="start: .* outside the times nowblock computes in"):
        _optimize(start=start)
