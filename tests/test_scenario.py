"""Scenario folders round-trip; the embedded NOW-Block is realistic, congested and seeded."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from nowblock.block.scenario import Scenario, ScenarioError
from nowblock.block.sessions import SessionsError, validate_sessions
from nowblock.block.site import SiteError
from nowblock.block.synth import (
    FLEET,
    car_habits,
    day_ahead_prices,
    household_load_kw,
    uncontrolled_phase_current_a,
)
from nowblock.block.scenario import generate_block

TZ = "Europe/Berlin"


@pytest.fixture(scope="module")
def block() -> Scenario:
    """The default scenario, generated once for this module (tests must not modify it)."""
    return Scenario.default()


def _assert_same(a: Scenario, b: Scenario) -> None:
    assert a.site == b.site
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
    pd.testing.assert_series_equal(a.base_load, b.base_load)
    pd.testing.assert_series_equal(a.prices, b.prices)


# ---- folders -----------------------------------------------------------------------------------
def test_small_scenario_folder_round_trip(tmp_path, small_scenario):
    path = small_scenario.to_dir(tmp_path / "small")
    assert sorted(p.name for p in path.iterdir()) == ["base_load.csv", "prices.csv", "sessions.csv", "site.toml"]
    _assert_same(Scenario.from_dir(path), small_scenario)


def test_default_folder_round_trip_across_dst(tmp_path):
    # The clocks change on 29 March 2026: one folder holds +01:00 and +02:00 offsets.
    scn = generate_block(n_charge_points=8, start="2026-03-26", days=5, seed=3)
    back = Scenario.from_dir(scn.to_dir(tmp_path / "dst"))
    _assert_same(back, scn)
    text = (tmp_path / "dst" / "base_load.csv").read_text()
    assert "+01:00" in text and "+02:00" in text


def test_folder_without_optional_series(tmp_path, small_site, small_sessions, caplog):
    scn = Scenario(small_site, small_sessions)
    with caplog.at_level("WARNING", logger="nowblock.block.scenario"):
        back = Scenario.from_dir(scn.to_dir(tmp_path / "bare"))
    assert back.base_load is None and back.prices is None
    pd.testing.assert_frame_equal(back.sessions, scn.sessions)
    # Said once each, with what it means for the results.
    said = [r.getMessage() for r in caplog.records]
    assert sum("no base_load.csv" in m and "taken as 0 kW" in m for m in said) == 1
    assert sum("no prices.csv" in m and "cost_eur is 0" in m for m in said) == 1


def test_folder_errors(tmp_path, small_scenario):
    with pytest.raises(ScenarioError, match="no site.toml"):
        Scenario.from_dir(tmp_path / "empty")
    path = small_scenario.to_dir(tmp_path / "s")
    (path / "base_load.csv").write_text("time,kw\n2026-03-02T00:00:00,1.0\n")
    with pytest.raises(ScenarioError, match=r"base_load.csv: line 2: time '2026-03-02T00:00:00' has no UTC offset"):
        Scenario.from_dir(path)
    (path / "base_load.csv").write_text("time,kw\n2026-03-02T00:00:00+01:00,lots\n")
    with pytest.raises(ScenarioError, match=r"line 2: kw 'lots' is not a number"):
        Scenario.from_dir(path)
    (path / "base_load.csv").write_text("")  # an interrupted copy: named, not a bare pandas error
    with pytest.raises(ScenarioError, match=r"base_load.csv: cannot read it as CSV time,kw"):
        Scenario.from_dir(path)
    (path / "base_load.csv").unlink()
    (path / "site.toml").write_text((path / "site.toml").read_text().replace('"L2L3L1"', '"L2L2L1"', 1))
    with pytest.raises(SiteError, match=r"site.toml: charge_points\[1\]\.phase_rotation"):
        Scenario.from_dir(path)


def test_sessions_error_in_folder_names_file_and_row(tmp_path, small_scenario):
    path = small_scenario.to_dir(tmp_path / "s")
    text = (path / "sessions.csv").read_text().replace("CP06", "CP66")
    (path / "sessions.csv").write_text(text)
    with pytest.raises(SessionsError, match=r"sessions.csv: line \d+ \(session_id='S\d+'\): unknown charge_point_id \('CP66'\)"):
        Scenario.from_dir(path)


def test_naive_series_rejected(small_site, small_sessions):
    naive = pd.Series([1.0, 2.0], index=pd.date_range("2026-03-02", periods=2, freq="15min"))
    with pytest.raises(ScenarioError, match="base_load: time index must be timezone-aware"):
        Scenario(small_site, small_sessions, base_load=naive)


def test_series_times_pandas_cannot_compute_in_are_refused(tmp_path, small_scenario, small_site, small_sessions):
    """A base load or price row dated 9999 (an open end) or 1600 was read, and then simulate
    stopped with OutOfBoundsDatetime (found by an outside test); the file's line is named."""
    path = small_scenario.to_dir(tmp_path / "s")
    for name, col in (("base_load.csv", "kw"), ("prices.csv", "eur_per_kwh")):
        keep = (path / name).read_text()
        for far in ("9999-12-31T23:00:00Z", "1600-01-01T00:00:00+00:00"):
            (path / name).write_text(f"time,{col}\n2026-03-02T00:00:00+01:00,1\n{far},1\n")
            with pytest.raises(ScenarioError, match=rf"{name}: line 3: time {re.escape(far)} is outside the times nowblock "
                                                    r"computes in \(1677-09-23 to 2262-04-09 UTC"):
                Scenario.from_dir(path)
        (path / name).write_text(keep)
    far = pd.Series([1.0, 2.0], index=pd.DatetimeIndex(["2026-03-02T00:00Z", "2300-01-01T00:00Z"]).as_unit("us"))
    with pytest.raises(ScenarioError, match=r"^prices: time 2300-01-01T01:00:00\+01:00 is outside the times"):
        Scenario(small_site, small_sessions, prices=far)


# ---- the embedded block ------------------------------------------------------------------------
def test_default_is_the_documented_block(block):
    site = block.site
    assert len(site.charge_points) == 24 and block.meta["n_households"] == 60
    assert site.timezone == TZ and site.root.id == "grid" and len(site.fuses) in (2, 3)
    max_a = site.cp_max_current_a
    assert (max_a == 16).sum() > (max_a == 32).sum() > 0  # mostly 11 kW, some 22 kW
    assert {cp.phase_rotation for cp in site.charge_points} == {"L1L2L3", "L2L3L1", "L3L1L2"}
    local = block.base_load.index.tz_convert(TZ)
    assert local[0] == pd.Timestamp("2026-03-02", tz=TZ)  # a Monday
    assert block.base_load.index.freq == pd.Timedelta("15min")
    assert block.prices.index.equals(block.base_load.index)
    s = block.sessions
    assert s["arrival"].min() >= block.base_load.index[0]
    assert s["arrival"].max() < block.base_load.index[0] + pd.Timedelta(days=7)
    assert s["departure"].max() <= block.base_load.index[-1] + pd.Timedelta("15min")
    assert set(s["charge_point_id"]) == set(site.charge_point_ids)
    validate_sessions(s, site)  # no overlap per charging point, all rows sane


def test_default_is_reproducible_and_seeded(block):
    _assert_same(Scenario.default(), block)
    other = generate_block(seed=43)
    assert not other.sessions["energy_kwh"].equals(block.sessions["energy_kwh"])
    assert not np.allclose(other.base_load.to_numpy(), block.base_load.to_numpy())


def test_weekday_evening_arrivals_dominate(block):
    local = block.sessions["arrival"].dt.tz_convert(TZ)
    hour = local.dt.hour + local.dt.minute / 60
    weekday = local.dt.day_of_week < 5
    evening = (hour >= 15) & (hour < 21)
    assert evening[weekday].mean() > 0.6
    # Weekend arrivals are flatter: spread over the day rather than bunched after work.
    assert hour[~weekday].std() > hour[weekday & evening].std()
    # Residential: most cars stay the night.
    dwell_h = (block.sessions["departure"] - block.sessions["arrival"]).dt.total_seconds() / 3600
    assert dwell_h.median() > 10


def _uncontrolled_grid_phase_a(scn: Scenario) -> pd.DataFrame:
    """Per-minute grid-phase current [A] if every car charged flat out from arrival."""
    site = scn.site
    t = pd.date_range(scn.base_load.index[0], scn.base_load.index[-1] + pd.Timedelta("15min"), freq="1min")
    out = pd.DataFrame(0.0, index=t, columns=["L1", "L2", "L3"])
    for row in scn.sessions.itertuples():
        cp = site.charge_point(row.charge_point_id)
        current = min(row.max_current_a, cp.max_current_a) * row.draw_fraction
        n_ph = min(row.phases, cp.phases)
        hours = row.energy_kwh / (current * n_ph * site.voltage_v / 1000)
        stop = min(row.departure, row.arrival + pd.Timedelta(hours=hours))
        wired = [cp.phase_rotation[2 * k : 2 * k + 2] for k in range(n_ph)]
        out.loc[(out.index >= row.arrival) & (out.index < stop), wired] += current
    base_a = scn.base_load.reindex(t, method="ffill") * 1000 / (3 * site.voltage_v)
    return out.add(base_a, axis=0)


def test_uncontrolled_evening_overloads_but_households_alone_do_not(block):
    limit_a = block.site.fuses[0].max_current_a[0]
    total = _uncontrolled_grid_phase_a(block)
    assert total.to_numpy().max() > 1.15 * limit_a  # clearly over
    local = total.index.tz_convert(TZ)
    over = total.max(axis=1) > limit_a
    assert over.sum() >= 30  # more than a passing spike (minutes over the limit)
    assert ((local.hour[over] >= 16) & (local.hour[over] <= 23)).mean() > 0.8  # in the evening
    base_a = block.base_load * 1000 / (3 * block.site.voltage_v)
    assert base_a.max() < 0.75 * limit_a


def test_uncontrolled_estimate_matches_a_plain_loop(block):
    # synth's vectorised estimate (used to size the connection) against the loop above.
    loop = _uncontrolled_grid_phase_a(block)
    est = uncontrolled_phase_current_a(block.site, block.sessions, loop.index)[:, 0, :]
    base_a = block.site.base_load_phase_current_a(block.base_load.reindex(loop.index, method="ffill").to_numpy())
    np.testing.assert_allclose(est + base_a, loop.to_numpy(), atol=1e-9)
    assert block.meta["uncontrolled_peak_a"] == pytest.approx(loop.to_numpy().max(), abs=0.01)


def test_small_scenario_is_congested(small_scenario):
    # What tests/conftest.py promises: uncontrolled, grid L2 and feeder-a go past their fuses.
    grid = _uncontrolled_grid_phase_a(small_scenario)
    assert grid["L2"].max() > 63 + 10
    feeder = uncontrolled_phase_current_a(small_scenario.site, small_scenario.sessions, grid.index)[:, 1, :]
    assert feeder.max() > 40 + 10


def test_congested_variant(block):
    tight = generate_block(grid_current_a=63)
    assert tight.site.fuses[0].max_current_a == (63.0, 63.0, 63.0)
    pd.testing.assert_frame_equal(tight.sessions, block.sessions)


def test_fleet_mix_and_habits(block):
    s = block.sessions.merge(
        pd.DataFrame({"charge_point_id": block.site.charge_point_ids, "cp_max": block.site.cp_max_current_a}),
        on="charge_point_id",
    )
    assert (s["phases"] == 1).any() and (s["phases"] == 3).mean() > 0.5
    # Single-phase cars land on more than one grid phase, thanks to the rotated wiring.
    one = s[s["phases"] == 1]
    grid_phase = {block.site.charge_point(c).phase_rotation[:2] for c in one["charge_point_id"]}
    assert len(grid_phase) >= 2
    assert (s["max_current_a"] < s["cp_max"]).any()  # a car that takes less than its wallbox
    assert (s["draw_fraction"] < 1).any() and (s["draw_fraction"] == 1).mean() > 0.5
    # Requests are truncated to the car's usable battery.
    usable = {h.charge_point_id: h.usable_kwh for h in car_habits(block.site, seed=block.meta["seed"])}
    assert (s["energy_kwh"] <= s["charge_point_id"].map(usable) + 1e-9).all()
    assert s["energy_kwh"].min() >= 1.0
    assert abs(sum(m.share for m in FLEET) - 1.0) < 1e-9


def test_cars_keep_their_habits():
    # A forecaster can learn a car: its weekday arrivals scatter less than the block's.
    scn = generate_block(days=21, seed=5)
    local = scn.sessions["arrival"].dt.tz_convert(TZ)
    wk = scn.sessions[local.dt.day_of_week < 5].assign(hour=local.dt.hour + local.dt.minute / 60)
    per_car = wk.groupby("charge_point_id")["hour"].std().median()
    assert per_car < 0.6 * wk["hour"].std()
    # Same point, same car: one phase count and one current limit per charging point.
    assert (scn.sessions.groupby("charge_point_id")[["phases", "max_current_a"]].nunique() == 1).all().all()


@pytest.mark.parametrize("days", [1, 2, 14])
def test_the_simulated_window_never_changes_the_site(days):
    week = generate_block(days=7, n_charge_points=6, seed=3)
    other = generate_block(days=days, n_charge_points=6, seed=3)
    assert other.site == week.site  # the grid connection is sized from the reference week
    assert other.meta["grid_sized_from_days"] == 7


def test_longer_period_keeps_the_first_week():
    week = generate_block(days=7, seed=9).sessions.set_index("session_id")
    fortnight = generate_block(days=14, seed=9).sessions.set_index("session_id")
    common = fortnight.loc[week.index]
    pd.testing.assert_series_equal(common["arrival"], week["arrival"])
    pd.testing.assert_series_equal(common["energy_kwh"], week["energy_kwh"])
    end = week["departure"].max()  # departures may only differ where the week cut them
    same = week["departure"] < end
    pd.testing.assert_series_equal(common.loc[same, "departure"], week.loc[same, "departure"])


def test_household_load_follows_h0_and_holidays():
    times = pd.date_range("2026-03-30", "2026-04-06", freq="15min", inclusive="left", tz=TZ)  # Mon..Sun
    kw = household_load_kw(times, n_households=10**6, seed=1)  # so many homes the noise vanishes
    local = kw.tz_convert(TZ)
    day = {d: local[local.index.date == pd.Timestamp(d).date()].to_numpy() for d in
           ("2026-04-02", "2026-04-03", "2026-04-05")}  # Thursday, Good Friday (holiday in NRW), Sunday
    hour = local.index.hour
    assert local[(hour >= 18) & (hour < 21)].mean() > 2 * local[(hour >= 2) & (hour < 5)].mean()
    # Good Friday is a Sunday to the standard load profile.
    assert np.corrcoef(day["2026-04-03"], day["2026-04-05"])[0, 1] > 0.99
    assert np.abs(day["2026-04-03"] / day["2026-04-05"] - 1).max() < 0.1
    assert np.abs(day["2026-04-03"] / day["2026-04-02"] - 1).max() > 0.2
    # Annual energy scales with households: 60 homes at 2500 kWh use about 150 MWh a year.
    year = pd.date_range("2026-01-01", "2027-01-01", freq="15min", inclusive="left", tz=TZ)
    assert household_load_kw(year, 60, seed=2).sum() / 4 == pytest.approx(150_000, rel=0.03)


def test_prices_have_day_ahead_shape(block):
    p = block.prices.tz_convert(TZ)
    by_hour = p.groupby(p.index.hour).mean()
    night, morning, midday, evening = by_hour[1:5].mean(), by_hour[7:9].mean(), by_hour[12:15].mean(), by_hour[18:21].mean()
    assert evening > morning > night and morning > midday
    assert 0.1 < p.mean() < 0.6  # EUR/kWh for a household on a dynamic tariff
    times = pd.date_range("2026-06-01", periods=96 * 14, freq="15min", tz=TZ)
    june = day_ahead_prices(times, seed=1)
    h = june.tz_convert(TZ).index.hour
    assert june[(h >= 12) & (h < 15)].mean() < june[(h >= 1) & (h < 5)].mean()  # solar dip below night


@pytest.mark.parametrize("step, n", [("5min", 8 * 288), ("1h", 8 * 24)])
def test_step(step, n, block):
    scn = generate_block(step=step)
    assert len(scn.base_load) == n and scn.base_load.index.freq == pd.Timedelta(step)
    assert scn.base_load.mean() == pytest.approx(block.base_load.mean(), rel=1e-6)


def test_scales_to_benchmark_size():
    scn = generate_block(n_charge_points=200, days=30, seed=1)
    assert len(scn.site.charge_points) == 200
    assert len(scn.base_load) == 31 * 96 - 4  # 31 local days, one hour lost to daylight saving time
    per_cp_day = len(scn.sessions) / (200 * 30)
    assert 0.3 < per_cp_day < 1.0
    assert scn.meta["uncontrolled_peak_a"] > scn.site.fuses[0].max_current_a[0] > scn.meta["base_peak_a"]
