"""Scenario folders and sessions files: what an outside tester found wrong, and stays fixed.

Sub-second times survive ``to_dir``; ids such as ``NA`` are names; errors name the CSV line;
warnings are printed once and name the file's line; a car maximum below its charging point's
minimum is warned about; a base load past the grid connection's rating is warned about, and an
absurd one (W given as kW) refused.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
import nowblock.block.series as series_mod
import nowblock.block.sessions as ses_mod
from nowblock.block.scenario import Scenario, ScenarioError, check_base_load
from nowblock.block.sessions import SessionsError, iso_times, read_sessions_csv

SITE_TOML = """name = "io"
voltage_v = 230
[[fuses]]
id = "grid"
max_current_a = [40, 40, 40]
[[charge_points]]
id = "CP01"
fuse = "grid"
max_current_a = 32
[[charge_points]]
id = "NA"
fuse = "grid"
max_current_a = 16
phases = 1
"""
HEADER = "session_id,charge_point_id,arrival,departure,energy_kwh\n"


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Every warning is logged once a process: each test starts with none logged."""
    monkeypatch.setattr(ses_mod, "_warned", set())
    monkeypatch.setattr(series_mod, "_warned", set())  # the base-load warnings live in block.series


def _folder(tmp_path, sessions: str, base_load: str | None = None):
    (tmp_path / "site.toml").write_text(SITE_TOML)
    (tmp_path / "sessions.csv").write_text(HEADER + sessions)
    if base_load is not None:
        (tmp_path / "base_load.csv").write_text("time,kw\n" + base_load)
    return tmp_path


def _site():
    return nb.Site.from_dict({"name": "io", "fuses": [{"id": "grid", "max_current_a": 40}],
                              "charge_points": [{"id": "CP01", "fuse": "grid", "max_current_a": 32}]})


# ---- A: sub-second times ---------------------------------------------------------------------------
def test_to_dir_keeps_fractions_of_a_second(tmp_path):
    site = _site()
    short = pd.DataFrame({"session_id": ["x"], "charge_point_id": ["CP01"],
                          "arrival": [pd.Timestamp("2026-03-02T10:00:00.2+01:00")],
                          "departure": [pd.Timestamp("2026-03-02T10:00:00.8+01:00")], "energy_kwh": [0.0]})
    path = Scenario(site, short).to_dir(tmp_path / "sub")
    row = (path / "sessions.csv").read_text().splitlines()[1]
    assert "2026-03-02T10:00:00.2+01:00,2026-03-02T10:00:00.8+01:00" in row, row
    back = Scenario.from_dir(path)  # was: "departure is not after arrival"
    assert back.sessions["arrival"].iloc[0] == short["arrival"].iloc[0]
    assert back.sessions["departure"].iloc[0] == short["departure"].iloc[0]


def test_iso_times_keep_whole_seconds_short_and_every_fraction_exact():
    times = pd.to_datetime(["2026-03-02T10:00:00+01:00", "2026-03-02T10:00:00.25+01:00",
                            "2026-07-01T12:00:00.123456789+02:00", None], utc=True, format="ISO8601")
    text = iso_times(times, "Europe/Berlin")
    assert text == ["2026-03-02T10:00:00+01:00", "2026-03-02T10:00:00.25+01:00",
                    "2026-07-01T12:00:00.123456789+02:00", ""]
    assert (pd.to_datetime(text[:3], format="ISO8601", utc=True) == times[:3]).all()


# ---- B: a car maximum below the charging point's minimum -------------------------------------------
def test_car_maximum_below_the_minimum_current_is_warned_about_by_line(tmp_path, caplog):
    (tmp_path / "site.toml").write_text(SITE_TOML)
    (tmp_path / "sessions.csv").write_text(
        "session_id,charge_point_id,arrival,departure,energy_kwh,max_current_a\n"
        "fine,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5,16\n"
        "low,CP01,2026-03-03T18:00:00+01:00,2026-03-03T22:00:00+01:00,5,5\n")
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        scn = Scenario.from_dir(tmp_path)  # read, then validated again by Scenario
        nb.validate_sessions(scn.sessions, scn.site)
    msgs = [r.getMessage() for r in caplog.records if "below their charging point's minimum" in r.getMessage()]
    assert len(msgs) == 1, msgs
    assert "line 3 (session_id='low')" in msgs[0] and "max_current_a 5 A" in msgs[0] and "6 A" in msgs[0]
    assert scn.sessions.set_index("session_id").loc["low", "max_current_a"] == 5.0  # the data is not changed


def test_car_maximum_at_the_minimum_or_nothing_to_charge_is_not_warned_about(caplog):
    frame = pd.DataFrame({"session_id": ["at-min", "empty"], "charge_point_id": ["CP01", "CP01"],
                          "arrival": pd.to_datetime(["2026-03-02T18:00+01:00", "2026-03-03T18:00+01:00"]),
                          "departure": pd.to_datetime(["2026-03-02T22:00+01:00", "2026-03-03T22:00+01:00"]),
                          "energy_kwh": [5.0, 0.0], "max_current_a": [6.0, 4.0]})
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        nb.validate_sessions(frame, _site())
    assert not [r for r in caplog.records if "minimum current" in r.getMessage()]


# ---- E: ids, line numbers, warnings once, base-load errors ------------------------------------------
def test_ids_like_na_and_null_are_names(tmp_path):
    path = _folder(tmp_path, "null,NA,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5\n"
                             "None,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,NA\n")
    with pytest.raises(SessionsError, match=r"line 3 \(session_id='None'\): energy_kwh is missing"):
        Scenario.from_dir(path)  # NA is still missing where a number is expected
    path = _folder(tmp_path, "null,NA,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5\n")
    scn = Scenario.from_dir(path)
    assert scn.sessions[["session_id", "charge_point_id"]].values.tolist() == [["null", "NA"]]


def test_an_empty_optional_cell_still_takes_its_default(tmp_path):
    (tmp_path / "s.csv").write_text("session_id,charge_point_id,arrival,departure,energy_kwh,max_current_a\n"
                                    "a,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5,\n"
                                    "b,CP01,2026-03-03T18:00:00+01:00,2026-03-03T22:00:00+01:00,5,NA\n")
    df = read_sessions_csv(tmp_path / "s.csv", _site())
    assert df["max_current_a"].tolist() == [ses_mod.OPTIONAL_DEFAULTS["max_current_a"]] * 2


@pytest.mark.parametrize("row, message", [
    ("x,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5\ny,,2026-03-02T18:00:00+01:00,"
     "2026-03-02T22:00:00+01:00,5\n", r"sessions.csv: line 3 \(session_id='y'\): charge_point_id is missing"),
    ("x,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5\n,CP01,2026-03-03T18:00:00+01:00,"
     "2026-03-03T22:00:00+01:00,5\n", r"sessions.csv: line 3: session_id is missing"),
])
def test_a_missing_id_is_reported_by_its_line(tmp_path, row, message):
    with pytest.raises(SessionsError, match=message):
        Scenario.from_dir(_folder(tmp_path, row))


def test_undeliverable_warning_is_printed_once_by_the_files_line(tmp_path, caplog):
    # The first short session in the file is not the first to arrive: Scenario's second check
    # (rows sorted by arrival) used to warn again, naming another session by a frame row.
    path = _folder(tmp_path, "late,CP01,2026-03-02T20:00:00+01:00,2026-03-02T20:30:00+01:00,60\n"
                             "early,NA,2026-03-02T18:00:00+01:00,2026-03-02T18:30:00+01:00,60\n")
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        Scenario.from_dir(path)
    msgs = [r.getMessage() for r in caplog.records if "more than the car can draw" in r.getMessage()]
    assert len(msgs) == 1 and "first line 2 (session_id='late')" in msgs[0], msgs


@pytest.mark.parametrize("rows, message", [
    ("2026-03-02T18:00:00+01:00,5\n2026-03-02T18:00:00+01:00,7\n",
     r"base_load.csv: line 3: time 2026-03-02T18:00:00\+01:00 repeats line 2$"),
    ("2026-03-02T18:00:00+01:00,5\n2026-03-02T19:00:00+01:00,\n", r"base_load.csv: line 3: kw is missing$"),
    ("2026-03-02T18:00:00+01:00,5\n,7\n", r"base_load.csv: line 3: time is missing$"),
])
def test_base_load_errors_name_the_file_and_line(tmp_path, rows, message):
    path = _folder(tmp_path, "x,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5\n", rows)
    with pytest.raises(ScenarioError, match=message) as err:
        Scenario.from_dir(path)
    assert "Timestamp(" not in str(err.value)


def test_series_errors_give_iso_times():
    sessions = pd.DataFrame({"session_id": ["x"], "charge_point_id": ["CP01"],
                             "arrival": [pd.Timestamp("2026-03-02T18:00+01:00")],
                             "departure": [pd.Timestamp("2026-03-02T22:00+01:00")], "energy_kwh": [5.0]})
    t = pd.DatetimeIndex(["2026-03-02T18:00+01:00"] * 2).tz_convert("UTC")
    with pytest.raises(ScenarioError, match=r"^base_load: duplicate times, first 2026-03-02T18:00:00\+01:00$"):
        Scenario(_site(), sessions, base_load=pd.Series([1.0, 2.0], index=t))
    t = pd.date_range("2026-03-02T18:00+01:00", periods=2, freq="h")
    with pytest.raises(ScenarioError, match=r"^prices: missing values at 2026-03-02T19:00:00\+01:00$"):
        Scenario(_site(), sessions, prices=pd.Series([0.3, np.nan], index=t))


# ---- F: a base load past the grid connection ------------------------------------------------------
GRID_KW = 3 * 40 * 230 / 1000  # 27.6 kW: the site's 40 A grid connection on three phases


def test_base_load_past_the_grid_connection_is_warned_about_with_count_and_worst(tmp_path, caplog):
    rows = "".join(f"2026-03-02T{h:02d}:00:00+01:00,{kw}\n" for h, kw in ((17, 10), (18, 30), (19, 35), (20, 10)))
    path = _folder(tmp_path, "x,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5\n", rows)
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        scn = Scenario.from_dir(path)
        scn.with_site(scn.site)  # the same series checked again: not warned again
    msgs = [r.getMessage() for r in caplog.records if "alone is above the grid connection" in r.getMessage()]
    assert len(msgs) == 1, msgs
    assert "base_load.csv" in msgs[0] and "in 2 of 4 values" in msgs[0] and "27.6 kW" in msgs[0]
    assert "worst line 4 (2026-03-02T19:00:00+01:00): 35 kW (50.7 A per phase)" in msgs[0], msgs[0]
    assert "max_overload_a does not count it" in msgs[0]


def test_base_load_within_the_rating_is_not_warned_about(caplog):
    t = pd.date_range("2026-03-02T18:00+01:00", periods=3, freq="h")
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        assert check_base_load(pd.Series([10.0, GRID_KW, -50.0], index=t), _site()) == 0
    assert not caplog.records


def test_absurd_base_load_is_refused_naming_file_and_line(tmp_path):
    rows = "2026-03-02T17:00:00+01:00,10\n2026-03-02T18:00:00+01:00,15000\n"  # W written as kW
    path = _folder(tmp_path, "x,CP01,2026-03-02T18:00:00+01:00,2026-03-02T22:00:00+01:00,5\n", rows)
    with pytest.raises(ScenarioError, match=r"base_load.csv: line 3 \(2026-03-02T18:00:00\+01:00\): kw 15000 is more "
                                            r"than 100 times what the grid connection 'grid' carries \(27.6 kW"):
        Scenario.from_dir(path)
    sessions = read_sessions_csv(path / "sessions.csv", _site())
    t = pd.date_range("2026-03-02T18:00+01:00", periods=2, freq="h")
    with pytest.raises(ScenarioError, match=r"^base_load: at 2026-03-02T19:00:00\+01:00: kw 3000 is more than 100"):
        Scenario(_site(), sessions, base_load=pd.Series([1.0, 3000.0], index=t))


def test_simulate_refuses_an_end_before_its_start():
    """It returned 0 sessions, 0 steps and demand_met 1 (a perfect week) instead."""
    from nowblock.sim.simulator import simulate

    scn = Scenario.default(days=1)
    t0 = scn.sessions["arrival"].min()
    with pytest.raises(ValueError, match="not after start"):
        simulate(scn, "edf", start=t0, end=t0 - pd.Timedelta(hours=1))


def test_a_scenario_refuses_infinite_prices():
    """They reached the MILP as NaN costs (HiGHS then ran past its time limit) and cost_eur came
    out 0."""
    scn = Scenario.default(days=1)
    prices = scn.prices.copy()
    prices.iloc[3] = np.inf
    with pytest.raises(ScenarioError, match="prices: infinite values"):
        Scenario(scn.site, scn.sessions, base_load=scn.base_load, prices=prices)
