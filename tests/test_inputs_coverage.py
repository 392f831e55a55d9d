"""Input checks found by an outside tester (session 36, /tmp/s36/h5_report.md): series that miss
the planned window, misspelt sessions columns, a CSV read straight by pandas across a clock
change, unclear messages, offsets that are not the site's, float noise in the report."""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.block.scenario import ScenarioError
from nowblock.block.sessions import read_sessions_csv
from nowblock.block.site import ChargePoint, Fuse, Site

TZ = "Europe/Berlin"
RATING_A = 40.0
START = "2026-07-01T18:00+02:00"


def _site() -> Site:
    return Site(name="t", fuses=(Fuse("grid", (RATING_A,) * 3),),
                charge_points=(ChargePoint("CP01", "grid", max_current_a=32.0),), voltage_v=230.0, timezone=TZ)


def _sessions(energy_kwh: float = 40.0) -> pd.DataFrame:
    return pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["CP01"],
                         "arrival": [pd.Timestamp(START)], "departure": [pd.Timestamp("2026-07-02T06:00+02:00")],
                         "energy_kwh": [energy_kwh]})


def _load(start: str, hours: int, kw) -> pd.Series:
    t = pd.date_range(pd.Timestamp(start), periods=hours, freq="1h")
    return pd.Series(np.broadcast_to(np.asarray(kw, float), (hours,)).copy(), index=t, name="kw")


# --- H1: a base load or prices that miss the planned window ---------------------------------


def test_optimize_refuses_a_base_load_a_year_off():
    year_off = _load("2025-07-01T18:00+02:00", 12, 20.0)
    with pytest.raises(ScenarioError, match=r"base_load: its times \(2025-07-01T18:00.*cover none of the horizon \(2026-07-01T18:00"):
        nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", base_load=year_off)


def test_optimize_refuses_an_empty_base_load_and_empty_prices():
    empty = pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float, name="kw")
    with pytest.raises(ScenarioError, match="base_load: no values"):
        nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", base_load=empty)
    with pytest.raises(ScenarioError, match="prices: no values"):
        nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", prices=empty.rename("eur_per_kwh"))


def test_optimize_refuses_a_base_load_that_ends_inside_the_horizon():
    # 20 kW at 18:00, then 2 kW from 19:00 to 22:00; nothing after 22:00. Its largest value (the
    # old fill) says nothing about the hours not given (rev2 F2: +26 A on a 50 A connection).
    load = pd.concat([_load("2026-07-01T18:00+02:00", 1, 20.0), _load("2026-07-01T19:00+02:00", 3, 2.0)])
    with pytest.raises(ScenarioError, match=r"base_load: no value for 2026-07-01T22:00:00\+02:00 \.\. "
                                            r"2026-07-02T06:00:00\+02:00 \(8 h, after its last time\) of the horizon"):
        nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", base_load=load)


def test_optimize_refuses_a_base_load_with_a_hole_inside_the_horizon():
    # rev2 F1: the first and last times span the horizon, 21:00-01:00 is missing; the 21:00 value
    # was held across the hole without a word.
    load = pd.concat([_load("2026-07-01T18:00+02:00", 3, 5.0), _load("2026-07-02T01:00+02:00", 5, 5.0)])
    with pytest.raises(ScenarioError, match=r"no value for 2026-07-01T21:00:00\+02:00 \.\. 2026-07-02T01:00:00\+02:00 "
                                            r"\(4 h, a gap between its times\)"):
        nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", base_load=load)
    # a gap up to the step is not a hole: 30-minute values at a 1-hour step
    t = pd.date_range(pd.Timestamp(START), periods=24, freq="30min")
    half = pd.Series(5.0, index=t, name="kw").drop(t[5])
    s = nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", base_load=half)
    assert np.allclose(s.form.base_kw, 5.0)


def test_a_fine_base_load_ending_at_the_last_slot_start_covers_the_horizon(caplog):
    # rev2 F7: 1-minute values up to 05:00 for a horizon ending 06:00 at a 1-hour step: the last
    # value holds for the last slot, as an hourly series ending at 05:00 does.
    t = pd.date_range(pd.Timestamp(START), pd.Timestamp("2026-07-02T05:00+02:00"), freq="1min")
    load = pd.Series(3.0, index=t, name="kw")
    load.iloc[:60] = 20.0  # an evening peak hours before: the old fill carried it into the last slot
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        s = nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", base_load=load)
    assert s.form.base_kw[0] == 20.0 and np.allclose(s.form.base_kw[1:], 3.0)
    assert not [r for r in caplog.records if "value" in r.getMessage()]


def test_optimize_fills_a_hole_in_prices_with_their_mean(caplog):
    # hourly prices without 20:00-00:00: a 5 h gap between 1 h gaps is a hole
    prices = pd.concat([_load("2026-07-01T18:00+02:00", 2, 0.4), _load("2026-07-02T00:00+02:00", 6, 0.1)])
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        s = nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", prices=prices.rename("eur_per_kwh"))
    price = np.asarray(s.form.price_eur_per_kwh)
    assert np.allclose(price[2:6], 0.175) and np.allclose(price[:2], 0.4) and np.allclose(price[6:], 0.1)
    assert any("first 2026-07-01T20:00:00+02:00 .. 2026-07-02T00:00:00+02:00, a gap between its times" in r.getMessage()
               for r in caplog.records)


def _at(times, values, name):
    return pd.Series(values, index=pd.DatetimeIndex([pd.Timestamp(t) for t in times]).tz_convert("UTC"), name=name)


def test_prices_given_as_change_points_hold_until_the_next_row(caplog):
    # rev4 F1: a tariff as change points (docs: a value holds until the next row); the whole
    # series' median gap made 18:00-22:00 of its 0.40 a hole, taken as the mean 0.286.
    pts = []
    for d in ("2026-07-01", "2026-07-02"):
        pts += [(f"{d}T00:00+02:00", 0.20), (f"{d}T06:00+02:00", 0.40), (f"{d}T22:00+02:00", 0.20)]
    prices = _at([t for t, _ in pts], [v for _, v in pts], "eur_per_kwh")
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        s = nb.optimize(_site(), _sessions(), start="2026-07-01T12:00+02:00", horizon="18h", step="1h",
                        prices=prices)
    price = np.asarray(s.form.price_eur_per_kwh)
    assert np.allclose(price[:10], 0.40) and np.allclose(price[10:], 0.20)  # 12:00-22:00, then 22:00-06:00
    assert not [r for r in caplog.records if "no value" in r.getMessage()]


def test_hourly_then_quarter_hourly_prices_are_not_holes():
    # rev4 F1: hourly day-ahead prices, then 15-minute ones (36 of 120 h were replaced by the mean)
    h = pd.date_range("2026-07-01T12:00+02:00", periods=12, freq="1h")
    q = pd.date_range("2026-07-02T00:00+02:00", periods=24, freq="15min")
    prices = pd.Series(np.r_[np.where(h.hour.isin(range(18, 21)), 0.60, 0.10), np.full(24, 0.15)],
                       index=h.append(q), name="eur_per_kwh")
    s = nb.optimize(_site(), _sessions(), start="2026-07-01T12:00+02:00", horizon="18h", step="15min", prices=prices)
    price = np.asarray(s.form.price_eur_per_kwh)
    assert np.allclose(price[24:36], 0.60) and np.allclose(price[:24], 0.10) and np.allclose(price[48:], 0.15)


def test_a_base_load_profile_of_change_points_is_accepted():
    # rev4 F1: 3 kW night, 8 kW from 06:00, 5 kW from 09:00, 12 kW from 17:00, 3 kW from 22:00 (refused before)
    times = ["2026-07-01T00:00+02:00", "2026-07-01T06:00+02:00", "2026-07-01T09:00+02:00", "2026-07-01T17:00+02:00",
             "2026-07-01T22:00+02:00", "2026-07-02T06:00+02:00", "2026-07-02T09:00+02:00"]
    load = _at(times, [3.0, 8.0, 5.0, 12.0, 3.0, 8.0, 5.0], "kw")
    s = nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", base_load=load)
    assert np.allclose(s.form.base_kw[:4], 12.0) and np.allclose(s.form.base_kw[4:], 3.0)


@pytest.mark.parametrize("step", ["15min", "5min"])
def test_one_missing_quarter_hour_reading_holds_the_value_before(step):
    # rev4 F4: a 30-minute gap in 15-minute meter data is no hole (it was refused)
    t = pd.date_range(pd.Timestamp(START), periods=48, freq="15min")
    load = pd.Series(5.0, index=t, name="kw")
    load.iloc[8] = 9.0
    load = load.drop(t[9])
    s = nb.optimize(_site(), _sessions(), start=START, horizon="12h", step=step, base_load=load)
    slot = pd.Timedelta(step)
    base = pd.Series(np.asarray(s.form.base_kw), index=pd.Timestamp(START) + slot * np.arange(len(s.form.base_kw)))
    assert np.allclose(base[t[8]:t[10] - slot], 9.0) and np.allclose(base.drop(base[t[8]:t[10] - slot].index), 5.0)


def test_six_hours_missing_from_quarter_hour_data_is_still_a_hole():
    t = pd.date_range(pd.Timestamp(START), periods=48, freq="15min")
    load = pd.Series(5.0, index=t, name="kw")
    gone = (load.index >= pd.Timestamp("2026-07-01T20:00+02:00")) & (load.index < pd.Timestamp("2026-07-02T02:00+02:00"))
    load = load[~gone]
    with pytest.raises(ScenarioError, match=r"no value for 2026-07-01T20:00:00\+02:00 \.\. 2026-07-02T02:00:00\+02:00 "
                                            r"\(6 h, a gap between its times\)"):
        nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="15min", base_load=load)


def test_optimize_fills_partial_prices_with_their_mean(caplog):
    prices = _load("2026-07-01T18:00+02:00", 4, [0.4, 0.4, 0.1, 0.1]).rename("eur_per_kwh")
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        s = nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h", prices=prices)
    assert np.allclose(np.asarray(s.form.price_eur_per_kwh)[4:], 0.25)
    assert any("mean, 0.25 EUR/kWh" in r.getMessage() for r in caplog.records)


def test_optimize_takes_0_kw_where_no_car_is_plugged_in(caplog):
    # rev4 F3: a base load covering the sessions' span (18:00-06:00) was refused under the default
    # 24 h horizon for 06:00-18:00, when no car is plugged in and no fuse is at risk.
    load = _load("2026-07-01T18:00+02:00", 12, 7.0)
    with caplog.at_level(logging.WARNING, logger="nowblock.block.scenario"):
        s = nb.optimize(_site(), _sessions(), start=START, step="1h", base_load=load)
    base = np.asarray(s.form.base_kw)
    assert len(base) == 24 and np.allclose(base[:12], 7.0) and np.allclose(base[12:], 0.0)  # 0, not a made-up peak
    said = [r.getMessage() for r in caplog.records if "no car is plugged in then" in r.getMessage()]
    assert len(said) == 1 and "first 2026-07-02T06:00:00+02:00 .. 2026-07-02T18:00:00+02:00" in said[0]


def test_fine_meter_data_from_after_the_floored_start_is_accepted(tmp_path):
    # rev4 F3: 5-minute values from 18:05, the only car from 18:07; the window floors to 18:00.
    t = pd.date_range(pd.Timestamp("2026-07-01T18:05+02:00"), pd.Timestamp("2026-07-02T06:00+02:00"), freq="5min")
    load = pd.Series(6.0, index=t, name="kw")
    sess = _sessions().assign(arrival=[pd.Timestamp("2026-07-01T18:07+02:00")])
    s = nb.optimize(_site(), sess, horizon="12h", step="15min", base_load=load)
    assert np.allclose(s.form.base_kw, 6.0)  # the first slot's fuses at its largest value, 6 kW from 18:05
    res = nb.simulate(nb.Scenario(_site(), sess, base_load=load), policy="equal", step="15min")
    assert res.metrics["demand_met"] > 0
    # a car plugged in before the first value still needs one
    with pytest.raises(ScenarioError, match=r"18:00:00\+02:00 \.\. 2026-07-01T18:05:00\+02:00 .*before its first "
                                            r"time\) of the simulated window .*, while a car is plugged in"):
        nb.simulate(nb.Scenario(_site(), _sessions(), base_load=load), policy="equal", step="15min")


def _folder(tmp_path, base_text: str | None = None, prices_text: str | None = None):
    scn = nb.Scenario(_site(), _sessions())
    scn.to_dir(tmp_path)
    if base_text is not None:
        (tmp_path / "base_load.csv").write_text(base_text)
    if prices_text is not None:
        (tmp_path / "prices.csv").write_text(prices_text)
    return tmp_path


def test_scenario_refuses_a_header_only_base_load_file(tmp_path):
    d = _folder(tmp_path, "time,kw\n")
    with pytest.raises(ScenarioError, match=r"base_load\.csv: no values"):
        nb.Scenario.from_dir(d)


def test_simulate_refuses_a_base_load_file_a_year_off(tmp_path):
    rows = "".join(f"2025-07-01T{h:02d}:00:00+02:00,10\n" for h in range(18, 24))
    scn = nb.Scenario.from_dir(_folder(tmp_path, "time,kw\n" + rows))
    with pytest.raises(ScenarioError, match=r"base_load\.csv: its times .* cover none of the simulated window"):
        nb.simulate(scn, policy="equal", step="1h")


def test_simulate_refuses_a_partial_base_load_file(tmp_path):
    rows = "2026-07-01T18:00:00+02:00,15\n2026-07-01T19:00:00+02:00,3\n2026-07-01T20:00:00+02:00,3\n"
    scn = nb.Scenario.from_dir(_folder(tmp_path, "time,kw\n" + rows))
    with pytest.raises(ScenarioError, match=r"base_load\.csv: no value for 2026-07-01T21:00:00\+02:00 .* after its "
                                            r"last time\) of the simulated window"):
        nb.simulate(scn, policy="equal", step="1h")


# --- H2: a misspelt sessions column -------------------------------------------------------------


@pytest.mark.parametrize("typo, meant", [("max_curent_a", "max_current_a"), ("phase", "phases"),
                                         ("Priority", "priority")])
def test_sessions_file_refuses_a_misspelt_optional_column(tmp_path, typo, meant):
    path = tmp_path / "sessions.csv"
    path.write_text(f"session_id,charge_point_id,arrival,departure,energy_kwh,{typo}\n"
                    "s1,CP01,2026-07-01T18:00:00+02:00,2026-07-02T06:00:00+02:00,10,1\n")
    with pytest.raises(nb.SessionsError, match=rf"sessions\.csv: .*unknown column '{typo}': did you mean '{meant}'"):
        read_sessions_csv(path, _site())


@pytest.mark.parametrize("other", ["min_current_a", "current_a", "MIN_CURRENT_A"])
def test_another_quantity_is_not_taken_for_a_misspelling(tmp_path, caplog, other):
    # rev2 F8: min_current_a (difflib 0.846) and current_a were refused as 'max_current_a'
    # misspelt; they name other quantities, kept and warned about like any column not read.
    path = tmp_path / "sessions.csv"
    path.write_text(f"session_id,charge_point_id,arrival,departure,energy_kwh,{other}\n"
                    "s1,CP01,2026-07-01T18:00:00+02:00,2026-07-02T06:00:00+02:00,10,8\n")
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        out = read_sessions_csv(path, _site())
    assert out[other].tolist() == [8] and out["max_current_a"].tolist() == [32.0]
    assert any(f"'{other}'" in r.getMessage() and "not read" in r.getMessage() for r in caplog.records)


def test_sessions_frame_refuses_a_misspelt_required_column_with_a_hint():
    df = _sessions().rename(columns={"energy_kwh": "energy_kWh"})
    with pytest.raises(nb.SessionsError, match=r"missing column.*did you mean 'energy_kwh' for 'energy_kWh'"):
        nb.validate_sessions(df, _site())


def test_sessions_keeps_other_columns_with_one_warning(caplog):
    df = _sessions().assign(id_tag="abc", energy_requested_kwh=12.0)
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        out = nb.validate_sessions(df, _site())
        nb.validate_sessions(df, _site())
    assert out["id_tag"].tolist() == ["abc"]
    said = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(said) == 1 and "'id_tag'" in said[0] and "'energy_requested_kwh'" in said[0]


# --- M2: a base load or prices read by pd.read_csv across a clock change ------------------------


def _dst_csv(tmp_path, column: str, value: float):
    # Berlin leaves summer time on 2026-10-25 at 03:00 (+02:00 -> +01:00).
    times = pd.date_range("2026-10-24T22:00", periods=8, freq="1h", tz=TZ)
    path = tmp_path / f"{column}.csv"
    pd.DataFrame({"time": [t.isoformat() for t in times], column: value}).to_csv(path, index=False)
    return path, times


def _dst_sessions() -> pd.DataFrame:
    return pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["CP01"],
                         "arrival": [pd.Timestamp("2026-10-24T22:00+02:00")],
                         "departure": [pd.Timestamp("2026-10-25T05:00+01:00")], "energy_kwh": [10.0]})


def test_optimize_and_scenario_read_a_frame_across_a_clock_change(tmp_path):
    path, times = _dst_csv(tmp_path, "kw", 7.0)
    raw = pd.read_csv(path)
    assert {"+02:00", "+01:00"} <= {t[-6:] for t in raw["time"]}
    s = nb.optimize(_site(), _dst_sessions(), start="2026-10-24T22:00+02:00", horizon="8h", step="1h",
                    base_load=raw)
    assert np.allclose(s.form.base_kw, 7.0)
    scn = nb.Scenario(_site(), _dst_sessions(), base_load=raw)
    assert scn.base_load.index.equals(times.tz_convert("UTC"))
    prices_path, _ = _dst_csv(tmp_path, "eur_per_kwh", 0.3)
    scn = nb.Scenario(_site(), _dst_sessions(), prices=pd.read_csv(prices_path))
    assert np.allclose(scn.prices.to_numpy(), 0.3)


@pytest.mark.parametrize("offsets", [("+02:00",), ("+02:00", "+01:00")])
def test_a_frame_with_a_blank_time_is_refused(offsets):
    # rev2 F10: pd.read_csv of a file with a blank time cell gave NaT, kept in the series (mixed
    # offsets included); the file reader refuses it ("line N: time is missing").
    times = [f"2026-10-25T0{h}:00:00{off}" for h, off in zip(range(1, 3), offsets * 2)]
    frame = pd.DataFrame({"time": [*times, None], "kw": [5.0, 6.0, 9.6]})
    with pytest.raises(ScenarioError, match=r"base_load: time is missing for value 3 of 3 \(9\.6 kW\)"):
        nb.Scenario(_site(), _sessions(), base_load=frame)
    with pytest.raises(ScenarioError, match=r"prices: time is missing for value 3 of 3"):
        nb.optimize(_site(), _sessions(), start=START, horizon="12h", step="1h",
                    prices=frame.rename(columns={"kw": "eur_per_kwh"}))


def test_scenario_names_base_load_for_a_frame_pandas_cannot_read(tmp_path):
    path, _ = _dst_csv(tmp_path, "kw", 7.0)
    raw = pd.read_csv(path)
    raw["kw"] = raw["kw"].astype(object)
    raw.loc[2, "kw"] = "seven"
    with pytest.raises(ScenarioError, match=r"^base_load: expected numbers \[kW\]"):
        nb.Scenario(_site(), _dst_sessions(), base_load=raw)
    raw = pd.read_csv(path)
    raw.loc[3, "time"] = "2026-10-25T01:00"  # no offset
    with pytest.raises(ScenarioError, match=r"^base_load: time index must be timezone-aware: '2026-10-25T01:00'"):
        nb.Scenario(_site(), _dst_sessions(), base_load=raw)


# --- L4: clearer messages -------------------------------------------------------------------------

SITE_TOML = """
name = "t"
timezone = "Europe/Berlin"
[[fuses]]
id = "grid"
max_current_a = MAX
[[charge_points]]
id = "CP01"
fuse = "grid"
max_current_a = 32
CAPS
"""


def _site_file(tmp_path, max_a: str = "40", caps: str = "") -> Site:
    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML.replace("MAX", max_a).replace("CAPS", caps))
    return Site.from_toml(path)


def test_a_semicolon_separated_sessions_file_gets_a_separator_hint(tmp_path):
    path = tmp_path / "sessions.csv"
    path.write_text("session_id;charge_point_id;arrival;departure;energy_kwh\n"
                    "s1;CP01;2026-07-01T18:00:00+02:00;2026-07-02T06:00:00+02:00;10,5\n")
    with pytest.raises(nb.SessionsError, match=r"missing column.*looks separated by ';'.*decimal point"):
        read_sessions_csv(path, _site())


def test_a_semicolon_separated_base_load_file_gets_a_separator_hint(tmp_path):
    d = _folder(tmp_path, "time;kw\n2026-07-01T18:00:00+02:00;1,5\n")
    with pytest.raises(ScenarioError, match=r"base_load\.csv: expected columns time,kw.*looks separated by ';'"):
        nb.Scenario.from_dir(d)


def test_a_row_with_too_few_fields_is_named_as_such(tmp_path):
    path = tmp_path / "sessions.csv"
    path.write_text("session_id,charge_point_id,arrival,departure,energy_kwh\n"
                    "s1,CP01,2026-07-01T18:00:00+02:00,2026-07-02T06:00:00+02:00,10\n"
                    "s2,CP01,2026-07-02T18:00:00+02:00,2026-07-03T06:00:00+02:00\n")
    with pytest.raises(nb.SessionsError, match=r"sessions\.csv: line 3: 4 field\(s\), the header has 5"):
        read_sessions_csv(path, _site())


_HEAD = "session_id,charge_point_id,arrival,departure,energy_kwh\n"
_ROW1 = "s1,CP01,2026-07-01T18:00:00+02:00,2026-07-02T06:00:00+02:00,"
_ROW2 = "s2,CP01,2026-07-02T18:00:00+02:00,2026-07-03T06:00:00+02:00,"


@pytest.mark.parametrize("rows, line", [(_ROW1 + "10\n" + _ROW2 + "20,5\n", 3),    # pandas' own "Expected 5 fields"
                                        (_ROW1 + "10,5\n" + _ROW2 + "20,5\n", 2)])  # every row: was shifted by a column
def test_a_decimal_comma_says_the_row_has_more_fields_than_the_header(tmp_path, rows, line):
    # rev2 F9: read with index_col=False and the row named with its line.
    path = tmp_path / "sessions.csv"
    path.write_text(_HEAD + rows)
    with pytest.raises(nb.SessionsError, match=rf"sessions\.csv: line {line}: 6 fields, the header has 5: the row has "
                                               r"more fields than the header \(a decimal comma\?"):
        read_sessions_csv(path, _site())


def test_a_decimal_comma_in_a_base_load_file_is_named(tmp_path):
    d = _folder(tmp_path, "time,kw\n2026-07-01T18:00:00+02:00,3,5\n2026-07-01T19:00:00+02:00,3,5\n")
    with pytest.raises(ScenarioError, match=r"base_load\.csv: line 2: 3 fields, the header has 2: .*decimal comma"):
        nb.Scenario.from_dir(d)


def test_a_trailing_comma_on_every_row_is_named_a_trailing_separator(tmp_path):
    # rev4 F6: 'time,kw' rows ending in ',' were named a decimal comma
    d = _folder(tmp_path, "time,kw\n2026-07-01T18:00:00+02:00,3,\n2026-07-01T19:00:00+02:00,3,\n")
    with pytest.raises(ScenarioError, match=r"base_load\.csv: line 2: 3 fields, the header has 2: the row ends with a "
                                            r"trailing separator") as err:
        nb.Scenario.from_dir(d)
    assert "decimal comma" not in str(err.value)
    path = tmp_path / "sessions.csv"
    path.write_text(_HEAD + _ROW1 + "10,\n" + _ROW2 + "20,\n")
    with pytest.raises(nb.SessionsError, match=r"sessions\.csv: line 2: 6 fields, the header has 5: the row ends with "
                                               r"a trailing separator"):
        read_sessions_csv(path, _site())
    # a decimal comma is still one
    path.write_text(_HEAD + _ROW1 + "10\n" + _ROW2 + "20,5\n")
    with pytest.raises(nb.SessionsError, match=r"line 3: .*a decimal comma\?"):
        read_sessions_csv(path, _site())


def test_messages_count_file_lines_after_a_quoted_newline(tmp_path):
    # rev2 F9: records were counted: the row on line 4 was called line 3.
    path = tmp_path / "sessions.csv"
    path.write_text("session_id,charge_point_id,arrival,departure,energy_kwh,note\n"
                    + _ROW1 + '10,"two\nlines"\n\n' + _ROW2 + "-4,\n")
    with pytest.raises(nb.SessionsError, match=r"line 5 \(session_id='s2'\): energy_kwh"):
        read_sessions_csv(path, _site())
    path.write_text("session_id,charge_point_id,arrival,departure,energy_kwh,note\n"
                    + _ROW1 + '10,"two\nlines"\ns2,CP01\n')
    with pytest.raises(nb.SessionsError, match=r"line 4: 2 field\(s\), the header has 6"):
        read_sessions_csv(path, _site())


@pytest.mark.parametrize("fname", ["base_load.csv", "prices.csv"])
def test_series_messages_count_blank_lines(tmp_path, fname):
    # rev4 F5: a bad time on line 7 after a blank line 4 was named line 6 (sessions.csv was right)
    col = "kw" if fname == "base_load.csv" else "eur_per_kwh"
    rows = [f"2026-07-01T{h:02d}:00:00+02:00,1\n" for h in range(18, 24)]
    text = f"time,{col}\n" + "".join(rows[:2]) + "\n" + "".join(rows[2:4]) + "xx,1\n" + "".join(rows[4:])
    d = _folder(tmp_path, **({"base_text": text} if fname == "base_load.csv" else {"prices_text": text}))
    with pytest.raises(ScenarioError, match=rf"{fname}: line 7: time 'xx' has no UTC offset"):
        nb.Scenario.from_dir(d)
    dup = f"time,{col}\n" + "".join(rows[:2]) + "\n\n" + rows[2] + rows[2]
    (d / fname).write_text(dup)
    with pytest.raises(ScenarioError, match=rf"{fname}: line 7: time 2026-07-01T20:00:00\+02:00 repeats line 6"):
        nb.Scenario.from_dir(d)


def test_a_base_load_value_past_the_connection_names_its_file_line(tmp_path):
    # check_base_load's line after a blank line (a value of 100 times the grid connection: W for kW)
    text = "time,kw\n2026-07-01T18:00:00+02:00,5\n\n2026-07-01T19:00:00+02:00,9e6\n"
    with pytest.raises(ScenarioError, match=r"base_load\.csv.*line 4"):
        nb.Scenario.from_dir(_folder(tmp_path, text))
    from nowblock.block.scenario import read_base_load_csv
    with pytest.raises(ScenarioError, match=r"base_load\.csv.*line 4"):
        read_base_load_csv(tmp_path / "base_load.csv", _site())


def test_a_row_without_its_optional_fields_is_still_read(tmp_path):
    path = tmp_path / "sessions.csv"
    path.write_text("session_id,charge_point_id,arrival,departure,energy_kwh,max_current_a,phases\n"
                    "s1,CP01,2026-07-01T18:00:00+02:00,2026-07-02T06:00:00+02:00,10\n")
    assert read_sessions_csv(path, _site())["max_current_a"].tolist() == [32.0]


def test_an_infinite_energy_must_be_finite():
    with pytest.raises(nb.SessionsError, match=r"row 0 \(session_id='s1'\): energy_kwh must be finite"):
        nb.validate_sessions(_sessions(energy_kwh=float("inf")), _site())


def test_a_quoted_fuse_rating_says_one_number_is_allowed(tmp_path):
    with pytest.raises(nb.SiteError, match=r"fuses\[0\]\.max_current_a: expected a number \[A\] .* or three "
                                           r"per-phase numbers .*got '25' \(text: write it without quotes\)"):
        _site_file(tmp_path, '"25"')
    assert _site_file(tmp_path, "25").root.max_current_a == (25.0, 25.0, 25.0)


def test_the_empty_cap_window_hint_is_accepted_as_it_stands(tmp_path):
    cap = '[[charge_points.caps]]\nstart = "17:00"\nend = "17:00"\nmax_current_a = 6\n'
    with pytest.raises(nb.SiteError, match="an empty window") as err:
        _site_file(tmp_path, caps=cap)
    start, end = re.search(r'start = "(\d\d:\d\d)", end = "(\d\d:\d\d)"', str(err.value)).groups()
    site = _site_file(tmp_path, caps=cap.replace('"17:00"\nend = "17:00"', f'"{start}"\nend = "{end}"'))
    # The whole day: the cap holds at 23:59 local time as well as at noon.
    times = pd.DatetimeIndex([pd.Timestamp("2026-07-01T12:00+02:00"), pd.Timestamp("2026-07-01T23:59+02:00")])
    assert np.allclose(site.cap_current_a(times, pd.Timedelta("1min"))[:, 0], 6.0)


# --- L5: a time whose offset is not the site zone's -----------------------------------------------


def test_a_sessions_time_with_a_foreign_offset_is_warned_about_once(tmp_path, caplog):
    path = tmp_path / "sessions.csv"
    path.write_text("session_id,charge_point_id,arrival,departure,energy_kwh\n"
                    "s1,CP01,2026-07-01T18:00:00+02:00,2026-07-02T06:00:00+02:00,10\n"
                    "s2,CP01,2026-07-02T18:00:00+05:00,2026-07-03T06:00:00Z,10\n"
                    "s3,CP01,2026-07-03T18:00:00+00:00,2026-07-04T06:00:00+02:00,10\n")
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        df = read_sessions_csv(path, _site())
        read_sessions_csv(path, _site())
    said = [r.getMessage() for r in caplog.records if "UTC offset that is not" in r.getMessage()]
    assert len(said) == 1
    assert "sessions.csv: arrival: 1 time(s)" in said[0] and "line 3 (session_id='s2')" in said[0]
    assert "'2026-07-02T18:00:00+05:00' is 2026-07-02 15:00 local time (+02:00)" in said[0]
    # Still the instant written.
    assert df.set_index("session_id").loc["s2", "arrival"] == pd.Timestamp("2026-07-02T13:00Z")


def test_a_base_load_time_with_a_foreign_offset_is_warned_about(tmp_path, caplog):
    rows = "2026-07-01T18:00:00+02:00,5\n2026-07-01T19:00:00+05:00,5\n2026-07-01T20:00:00+02:00,5\n"
    with caplog.at_level(logging.WARNING, logger="nowblock.block.sessions"):
        nb.Scenario.from_dir(_folder(tmp_path, "time,kw\n" + rows))
    said = [r.getMessage() for r in caplog.records if "UTC offset that is not" in r.getMessage()]
    assert len(said) == 1 and "base_load.csv: 1 time(s)" in said[0] and "line 3" in said[0]


# --- L7: float noise in the unbalance metric and the report -----------------------------------------


def _unbalanced_block(excess_a: float):
    from nowblock.sim.block import SimulatedBlock

    site = Site(name="t", fuses=(Fuse("grid", (RATING_A,) * 3),),
                charge_points=(ChargePoint("CP01", "grid", max_current_a=32.0),), voltage_v=230.0, timezone=TZ,
                max_unbalance_a=20.0)
    scn = nb.Scenario(site, _sessions())
    start = pd.Timestamp(START)
    block = SimulatedBlock(scn, step=pd.Timedelta("1h"), horizon=pd.Timedelta("2h"), start=start,
                           end=start + pd.Timedelta("2h"))
    block.cars_ph_a[0] = [20.0 + excess_a, 0.0, 0.0]  # the cars' unbalance on the grid connection
    block.unbalance_a[0] = 20.0 + excess_a  # as apply records it, the step's worst part (7d3a6e7)
    return block.timeseries()[3]


def test_unbalance_excess_of_float_noise_is_zero():
    noise = np.nextafter(20.0, 30.0) - 20.0  # 3.55e-15 A, as 'cars on L1 - cars on L3' left it
    assert _unbalanced_block(noise) == 0.0
    assert _unbalanced_block(0.5) == pytest.approx(0.5)


def test_report_shows_float_noise_as_zero():
    from nowblock.sim.report import report_html

    scn = nb.Scenario(_site(), _sessions())
    res = nb.simulate(scn, policy="equal", step="1h")
    res.metrics["max_unbalance_excess_a"] = 3.552713678800501e-15
    res.metrics["cost_eur"] = 0.0004
    html = report_html([res], scenario=scn)
    cell = re.search(r"<th scope='row'>max_unbalance_excess_a</th><td>([^<]*)</td>", html).group(1)
    assert cell == "0"
    assert re.search(r"<th scope='row'>cost_eur</th><td>([^<]*)</td>", html).group(1) == "0.0004"
