"""``simulate`` and ``nowblock simulate`` refuse arguments in the wrong unit, naming the argument.

Found by an outside test: ``simulate(step="5")`` raised a MemoryError for 141 TiB of step grid
(the number read as nanoseconds), ``step=300`` pandas' "freq=<300 * Nanos> is incompatible";
``nowblock simulate --step 5`` printed the MemoryError as an internal error and exited 1.
"""

from __future__ import annotations

import pandas as pd
import pytest

import nowblock as nb
from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.cli import main

T0 = pd.Timestamp("2026-03-02T17:00", tz="Europe/Berlin")


def _site() -> Site:
    return Site("units", (Fuse("grid", (63.0, 63.0, 63.0)),), (ChargePoint("CP01", "grid", max_current_a=16.0),))


def _sessions(**extra) -> pd.DataFrame:
    return pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["CP01"], "arrival": [T0],
                         "departure": [T0 + pd.Timedelta("3h")], "energy_kwh": [10.0], **extra})


def _scenario(**kw) -> Scenario:
    return Scenario(_site(), _sessions(), **kw)


def _exit_status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " WARNING nowblock." not in line]
    assert len(err) == 1, err
    assert "internal error" not in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("step, kind, words", [
    ("5", ValueError, "step: '5' has no unit"),
    ("15", ValueError, "step: '15' has no unit"),
    (300, TypeError, "step: expected a duration with a unit"),
    ("0min", ValueError, "step: must be > 0"),
    ("-5min", ValueError, "step: must be > 0"),
])
def test_simulate_refuses_a_step_without_unit_or_not_positive(step, kind, words):
    with pytest.raises(kind, match=words):
        nb.simulate(_scenario(), "edf", step=step)


def test_simulate_step_with_unit_still_runs():
    res = nb.simulate(_scenario(), "edf", step=pd.Timedelta("15min"))
    assert res.metrics["n_steps"] == 12


@pytest.mark.parametrize("value", ["5", "300"])
def test_cli_step_without_unit_is_one_line_exit_2(tmp_path, capsys, value):
    _scenario().to_dir(tmp_path / "scn")
    out = tmp_path / "out"
    assert _exit_status(["simulate", "--scenario", str(tmp_path / "scn"), "--policy", "edf", "--step", value,
                         "--out", str(out), "--quiet", "--no-plot"]) == 2
    assert f"nowblock simulate: --step: '{value}' has no unit" in _one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("horizon, kind, words", [
    ("24", ValueError, "horizon: '24' has no unit"),
    (24, TypeError, "horizon: expected a duration with a unit"),
    ("-1h", ValueError, "horizon: must be > 0"),
    ("0h", ValueError, "horizon: must be > 0"),
])
def test_simulate_refuses_a_horizon_without_unit_or_not_positive(horizon, kind, words):
    """``horizon="24"`` was read as 24 ns, one step: the MILP lost its look-ahead without a word
    (outside test: demand met 0.8103 with "24h", 0.7984 with "24", 24, "-1h" or "0h")."""
    with pytest.raises(kind, match=words):
        nb.simulate(_scenario(), "edf", step="15min", horizon=horizon)


def test_cli_horizon_without_unit_is_one_line_exit_2(tmp_path, capsys):
    _scenario().to_dir(tmp_path / "scn")
    out = tmp_path / "out"
    assert _exit_status(["simulate", "--scenario", str(tmp_path / "scn"), "--policy", "edf", "--step", "15min",
                         "--horizon", "24", "--out", str(out), "--quiet", "--no-plot"]) == 2
    assert "nowblock simulate: --horizon: '24' has no unit" in _one_line(capsys)
    assert not out.exists()


# ---- F8: each wrong argument named, in its unit ---------------------------------------------------
def test_unknown_fallback_names_fallback_not_policy():
    with pytest.raises(ValueError, match=r"^fallback: unknown policy 'nope'; choose one of "):
        nb.simulate(_scenario(), "edf", step="15min", fallback="nope")


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan")])
def test_current_step_not_positive_is_refused(value):
    with pytest.raises(ValueError, match=r"^current_step_a: must be > 0 A"):
        nb.simulate(_scenario(), "edf", step="15min", current_step_a=value)


@pytest.mark.parametrize("what, value, unit", [("base_load", [5.0] * 4, "kW"), ("prices", [0.3] * 4, "EUR/kWh")])
def test_a_list_for_a_series_says_a_series_is_expected(what, value, unit):
    """It said "time index must be timezone-aware"; now optimize's words (milp.inputs.check_series)."""
    with pytest.raises(TypeError, match=rf"^{what}: expected a pandas Series \[{unit}\] over timezone-aware times "
                                        rf".* got list$"):
        Scenario(_site(), _sessions(), **{what: value})


def test_session_maximum_in_ma_is_refused_naming_the_row():
    """A car's 16000 (mA) was accepted; the site file refuses a charging point above 80 A."""
    with pytest.raises(nb.SessionsError, match=r"^row 0 \(session_id='s1'\): max_current_a is above 80 A per phase.*"
                                               r"was it given in mA\? \(got 16000\)$"):
        Scenario(_site(), _sessions(max_current_a=[16000.0]))
    assert Scenario(_site(), _sessions(max_current_a=[80.0])).sessions["max_current_a"].iloc[0] == 80.0
