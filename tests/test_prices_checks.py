"""Prices are checked wherever they enter: in the wrong unit refused (as a base load in W is), by the
live controller as by a scenario and optimize.

Prices in the wrong unit are refused, as a base load in W is (block.scenario.check_prices).

Found by an outside test: prices in EUR/MWh (300) or ct/kWh (30) given as EUR/kWh were taken
without a word; the MILP then weighed them against its 20 EUR/kWh shortfall penalty and left
cars short (demand met 0.8112 in EUR/kWh, 0.7790 with the same prices in EUR/MWh).

The live controller checks its prices as a scenario and optimize do (found by a review:
``Controller(..., prices=<EUR/MWh>)`` was planned on without a word).
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from test_control import Clock, FakeCentral

from nowblock.block.scenario import Scenario, ScenarioError
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.cli import main
from nowblock.control import Controller


T0 = pd.Timestamp("2026-03-02T17:00", tz="Europe/Berlin")
IDX = pd.date_range(T0, periods=6, freq="1h")


def _site() -> Site:
    return Site("units", (Fuse("grid", (63.0, 63.0, 63.0)),), (ChargePoint("CP01", "grid", max_current_a=16.0),))


def _sessions() -> pd.DataFrame:
    return pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["CP01"], "arrival": [T0],
                         "departure": [T0 + pd.Timedelta("3h")], "energy_kwh": [10.0]})


@pytest.mark.parametrize("eur", [300.0, 60.0, -500.0])
def test_prices_beyond_the_ceiling_are_refused_with_the_unit(eur):
    prices = pd.Series([0.3, 0.3, eur, 0.3, 0.3, 0.3], index=IDX)
    with pytest.raises(ScenarioError) as err:
        Scenario(_site(), _sessions(), prices=prices)
    text = str(err.value)
    assert text.startswith("prices: at 2026-03-02T19:00:00+01:00: eur_per_kwh ")  # the value's time, local
    assert f"{eur:g}" in text and "expected EUR/kWh" in text and "EUR/MWh or ct/kWh" in text


@pytest.mark.parametrize("eur", [0.3, -0.5, 4.0, 10.0])
def test_plausible_prices_are_kept(eur, caplog):
    """Day-ahead extremes (+4 and -0.5 EUR/kWh) and 10 EUR/kWh are prices, kept without a word."""
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        scn = Scenario(_site(), _sessions(), prices=pd.Series(eur, index=IDX))
    assert scn.prices.max() == eur
    assert not [r for r in caplog.records if "eur_per_kwh" in r.getMessage()]


@pytest.mark.parametrize("eur", [12.14, 30.0, -11.0])
def test_a_scarcity_retail_price_is_kept_with_a_warning(eur, caplog):
    """Found by a review: 10 EUR/kWh refused a real retail price at an intraday scarcity hour
    (9.999 EUR/kWh spot + 0.20 fees, x 1.19 VAT = 12.14 EUR/kWh). Beyond 10 EUR/kWh a price is
    kept and warned about (ct/kWh given as EUR/kWh lands here too); beyond 50 it is refused."""
    prices = pd.Series([0.3, 0.3, eur, 0.3, 0.3, 0.3], index=IDX)
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        scn = Scenario(_site(), _sessions(), prices=prices)
    assert scn.prices.iloc[2] == eur
    warned = [r.getMessage() for r in caplog.records if "eur_per_kwh" in r.getMessage()]
    assert len(warned) == 1 and f"{eur:g}" in warned[0] and "ct/kWh" in warned[0], warned


def test_prices_file_names_its_line(tmp_path):
    Scenario(_site(), _sessions(), prices=pd.Series(0.25, index=IDX)).to_dir(tmp_path / "scn")
    path = tmp_path / "scn" / "prices.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ",250.0"  # line 5 in an editor: EUR/MWh
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScenarioError, match=rf"^{path}: line 5 \(2026-03-02T20:00:00\+01:00\): eur_per_kwh 250 "):
        Scenario.from_dir(tmp_path / "scn")


def test_cli_prices_in_eur_per_mwh_is_one_line_exit_2(tmp_path, capsys):
    Scenario(_site(), _sessions()).to_dir(tmp_path / "scn")
    body = "time,eur_per_kwh\n" + "".join(f"{t.isoformat()},{300.0 + k}\n" for k, t in enumerate(IDX))
    (tmp_path / "scn" / "prices.csv").write_text(body)
    out = tmp_path / "out"
    try:
        code = main(["simulate", "--scenario", str(tmp_path / "scn"), "--policy", "edf", "--step", "15min",
                     "--out", str(out), "--quiet", "--no-plot"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if " WARNING nowblock." not in ln]
    assert len(err) == 1, err
    head = f"nowblock simulate: {tmp_path / 'scn' / 'prices.csv'}: line 2 (2026-03-02T17:00:00+01:00): eur_per_kwh 300 "
    assert err[0].startswith(head) and "expected EUR/kWh" in err[0] and "internal error" not in err[0], err[0]
    assert not out.exists()


@pytest.mark.parametrize("unit, values", [("EUR/MWh on a windy day", [2.0, 15.0, 22.0, 31.0, 48.0, 12.0]),
                                          ("ct/kWh", [28.0, 31.0, 35.0, 42.0, 30.0, 29.0])])
def test_a_whole_series_in_another_unit_is_refused(unit, values):
    """Found by a review: a day of 2-48 EUR/MWh given as EUR/kWh stayed below the 50 EUR/kWh
    ceiling value by value and was kept with a warning; a series whose middle is past 10 EUR/kWh
    is no tariff in EUR/kWh (one scarcity hour is kept, above)."""
    day = pd.date_range(T0, periods=24, freq="1h")
    with pytest.raises(ScenarioError, match="half of the prices are beyond"):
        Scenario(_site(), _sessions(), prices=pd.Series(values * 4, index=day))


def test_a_short_window_of_scarcity_hours_is_kept():
    """Found by a review: a 4 h window with 3 h at 10.5 EUR/kWh (the intraday cap plus fees) was
    refused by the median rule; it applies to a day or more only."""
    window = pd.Series([10.5, 10.5, 10.5, 0.4], index=pd.date_range(T0, periods=4, freq="1h"))
    assert Scenario(_site(), _sessions(), prices=window).prices.max() == 10.5


def _controller(prices):
    site = Site("p", (Fuse("grid", (63.0,) * 3),), (ChargePoint("CP0", "grid", 16.0, 6.0),))
    clock = Clock()
    return Controller(FakeCentral(site), site, "edf", period_s=60, clock=clock, min_replan_s=0.0, prices=prices)


def test_live_prices_in_eur_per_mwh_are_refused():
    idx = pd.date_range("2026-12-07T00:00", periods=24, freq="1h", tz="UTC")
    with pytest.raises(ScenarioError, match="eur_per_kwh 300 is beyond"):
        _controller(pd.Series(300.0, index=idx))
    with pytest.raises(TypeError, match="prices: expected a pandas Series"):
        _controller([0.3] * 24)
    ctl = _controller(pd.Series(0.3, index=idx))  # EUR/kWh: planned on
    assert float(ctl.source.prices.max()) == 0.3
