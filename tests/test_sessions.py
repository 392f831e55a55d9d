"""Sessions frame: every bad row raises one SessionsError that names the row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowblock.block.sessions import SessionsError, read_sessions_csv, validate_sessions, write_sessions_csv


def test_good_frame_is_normalised(small_sessions, small_site):
    before = small_sessions.copy()
    out = validate_sessions(small_sessions, small_site)
    pd.testing.assert_frame_equal(small_sessions, before)  # the input is not modified
    assert str(out["arrival"].dt.tz) == "UTC" and str(out["departure"].dt.tz) == "UTC"
    assert out["arrival"].is_monotonic_increasing
    assert out["phases"].dtype == np.int64
    # 17:10 in Berlin (winter time) is 16:10 UTC.
    s01 = out.set_index("session_id").loc["S01"]
    assert s01["arrival"] == pd.Timestamp("2026-03-02 16:10", tz="UTC")


def test_optional_columns_get_defaults(small_sessions, small_site):
    bare = small_sessions[["session_id", "charge_point_id", "arrival", "departure", "energy_kwh"]]
    out = validate_sessions(bare, small_site)
    assert (out["max_current_a"] == 32.0).all() and (out["phases"] == 3).all()
    assert (out["priority"] == 1.0).all() and (out["draw_fraction"] == 1.0).all()


def _bad(df: pd.DataFrame, i: int, col: str, value) -> pd.DataFrame:
    df = df.copy()
    df[col] = df[col].astype(object)
    df.loc[i, col] = value
    return df


@pytest.mark.parametrize(
    "col, value, message",
    [
        ("departure", pd.Timestamp("2026-03-02 17:00", tz="Europe/Berlin"), "departure is not after arrival"),
        ("energy_kwh", -1.0, "energy_kwh must be a number >= 0"),
        ("energy_kwh", np.nan, "energy_kwh is missing"),
        ("charge_point_id", "CP99", "unknown charge_point_id \\('CP99'\\)"),
        ("phases", 4, "phases must be 1, 2 or 3"),
        ("phases", 1.5, "phases must be 1, 2 or 3"),
        ("max_current_a", 0.0, "max_current_a must be > 0"),
        ("max_current_a", "lots", "max_current_a is not a number \\('lots'\\)"),
        ("draw_fraction", 1.2, "draw_fraction must be in \\[0, 1\\]"),
        ("priority", -1.0, "priority must be >= 0"),
        ("arrival", "2026-03-02 17:10", "arrival '2026-03-02 17:10' has no UTC offset"),
        ("arrival", "yesterday-ish", "arrival 'yesterday-ish' is not a timestamp"),
        ("arrival", None, "arrival is missing"),
        ("energy_kwh", np.inf, "energy_kwh must be finite"),
        ("charge_point_id", None, "charge_point_id is missing"),
    ],
)
def test_bad_row_is_named(small_sessions, small_site, col, value, message):
    df = _bad(small_sessions, 3, col, value)  # row 3 is S04
    with pytest.raises(SessionsError, match=rf"row 3 \(session_id='S04'\): {message}"):
        validate_sessions(df, small_site)


def test_overlap_on_one_charge_point_names_both(small_sessions, small_site):
    # S07 on CP03 arrives at 23:00; move S03 (same point) to leave at 23:30.
    df = small_sessions.copy()
    df.loc[2, "departure"] = pd.Timestamp("2026-03-02 23:30", tz="Europe/Berlin")
    with pytest.raises(SessionsError, match=r"row 6 \(session_id='S07'\): overlaps session 'S03' on charge point 'CP03'"):
        validate_sessions(df, small_site)
    # Back to back (departure == next arrival) is fine.
    df.loc[2, "departure"] = pd.Timestamp("2026-03-02 23:00", tz="Europe/Berlin")
    validate_sessions(df, small_site)


def test_same_time_on_different_points_is_fine(small_sessions, small_site):
    df = small_sessions.copy()
    df["arrival"] = df["arrival"].iloc[0]
    df["departure"] = df["arrival"] + pd.Timedelta("3h")
    df = df.drop_duplicates("charge_point_id")
    assert len(validate_sessions(df, small_site)) == 6


def test_naive_datetime_column(small_sessions, small_site):
    df = small_sessions.copy()
    df["departure"] = df["departure"].dt.tz_localize(None)
    with pytest.raises(SessionsError, match=r"row 0 \(session_id='S01'\): departure .* has no timezone"):
        validate_sessions(df, small_site)


def test_missing_column(small_sessions):
    with pytest.raises(SessionsError, match=r"missing column\(s\) \['energy_kwh'\]"):
        validate_sessions(small_sessions.drop(columns="energy_kwh"))


def test_duplicate_session_id(small_sessions):
    df = _bad(small_sessions, 5, "session_id", "S01")
    with pytest.raises(SessionsError, match=r"row 5 \(session_id='S01'\): duplicate session_id"):
        validate_sessions(df)


def test_not_a_frame():
    with pytest.raises(SessionsError, match="expected a pandas DataFrame"):
        validate_sessions([{"session_id": "a"}])


def test_unknown_point_is_only_checked_with_a_site(small_sessions):
    df = _bad(small_sessions, 0, "charge_point_id", "elsewhere")
    assert len(validate_sessions(df)) == len(df)


def test_mixed_offsets_across_dst(small_site):
    # Strings with +01:00 and +02:00 (the clocks change on 29 March 2026) parse row by row.
    df = pd.DataFrame(
        {
            "session_id": ["a", "b"],
            "charge_point_id": ["CP01", "CP01"],
            "arrival": ["2026-03-28T18:00:00+01:00", "2026-03-29T18:00:00+02:00"],
            "departure": ["2026-03-29T08:00:00+02:00", "2026-03-30T07:00:00+02:00"],
            "energy_kwh": [10.0, 12.0],
        }
    )
    out = validate_sessions(df, small_site)
    assert list(out["arrival"]) == [pd.Timestamp("2026-03-28 17:00", tz="UTC"), pd.Timestamp("2026-03-29 16:00", tz="UTC")]
    assert out.loc[0, "departure"] - out.loc[0, "arrival"] == pd.Timedelta("13h")


def test_csv_round_trip_and_naive_row(tmp_path, small_sessions, small_site):
    ref = validate_sessions(small_sessions, small_site)
    path = tmp_path / "sessions.csv"
    write_sessions_csv(ref, path, tz="Europe/Berlin")
    assert "2026-03-02T17:10:00+01:00" in path.read_text()
    pd.testing.assert_frame_equal(read_sessions_csv(path, small_site), ref)
    # One value without an offset is reported by its row, never read as UTC.
    text = path.read_text().replace("2026-03-02T17:10:00+01:00", "2026-03-02T17:10:00")
    path.write_text(text)
    row = int(np.nonzero(ref["session_id"].to_numpy() == "S01")[0][0])
    # Named by the file and the line an editor shows (the header is line 1).
    line = row + 2
    assert text.splitlines()[line - 1].startswith("S01,")
    with pytest.raises(SessionsError, match=rf"sessions.csv: line {line} \(session_id='S01'\): arrival "
                                            rf"'2026-03-02T17:10:00' has no UTC offset"):
        read_sessions_csv(path, small_site)


def test_frame_rows_are_named_by_their_index_label(small_sessions, small_site):
    df = small_sessions.copy()
    df.index = [f"r{i}" for i in range(len(df))]
    df.loc["r2", "energy_kwh"] = -1
    with pytest.raises(SessionsError, match=r"row 'r2' \(session_id='S03'\): energy_kwh must be a number >= 0"):
        validate_sessions(df, small_site)


def test_impossible_energy_is_refused_with_the_plausible_range(small_sessions, small_site):
    df = small_sessions.copy()
    df.loc[1, "energy_kwh"] = 1e9
    with pytest.raises(SessionsError, match=r"row 1 \(session_id='S02'\): energy_kwh is above 1000 kWh, more than "
                                            r"any vehicle battery .* was it given in Wh\? \(got 1e\+09\)"):
        validate_sessions(df, small_site)


def test_undeliverable_energy_is_warned_about_once(small_sessions, small_site, caplog):
    import nowblock.block.sessions as ses

    df = small_sessions.copy()
    stay_h = (pd.to_datetime(df.loc[0, "departure"]) - pd.to_datetime(df.loc[0, "arrival"])).total_seconds() / 3600
    df.loc[0, "energy_kwh"] = 190.0  # plausible battery, but more than the charging point gives in the stay
    cp = small_site.charge_point(df.loc[0, "charge_point_id"])
    most = stay_h * cp.max_current_a * cp.phases * small_site.voltage_v / 1000
    assert most < 190.0
    ses._warned.clear()
    with caplog.at_level("WARNING", logger="nowblock.block.sessions"):
        validate_sessions(df, small_site)
        validate_sessions(df, small_site)
    msgs = [r.getMessage() for r in caplog.records if "more than the car can draw" in r.getMessage()]
    assert len(msgs) == 1 and f"at most {most:.1f} kWh" in msgs[0] and "row 0 (session_id='S01')" in msgs[0]


def test_implausible_energy_in_a_scenario_folder_is_warned_about_once_by_its_line(tmp_path, caplog, monkeypatch):
    import nowblock as nb
    import nowblock.block.sessions as ses

    monkeypatch.setattr(ses, "_warned", set())
    (tmp_path / "site.toml").write_text('[[fuses]]\nid = "grid"\nmax_current_a = 100\n'
                                        '[[charge_points]]\nid = "CP01"\nfuse = "grid"\n')
    (tmp_path / "sessions.csv").write_text("session_id,charge_point_id,arrival,departure,energy_kwh\n"
                                           "a,CP01,2026-03-02T18:00:00+01:00,2026-03-04T18:00:00+01:00,250\n")
    with caplog.at_level("WARNING", logger="nowblock.block.sessions"):
        nb.Scenario.from_dir(tmp_path)  # read from the file, then checked again by Scenario
    msgs = [r.getMessage() for r in caplog.records if "large car battery" in r.getMessage()]
    assert len(msgs) == 1 and "line 2 (session_id='a')" in msgs[0], msgs


def test_unreadable_csv(tmp_path):
    with pytest.raises(SessionsError, match="cannot read sessions"):
        read_sessions_csv(tmp_path / "missing.csv")


def test_a_time_pandas_cannot_compute_in_is_refused_by_its_line(tmp_path, small_sessions, small_site):
    """A departure of 9999-12-31 (an export's open end) or a year past 2262 was read, and then
    simulate and optimize stopped with OutOfBoundsDatetime ("an internal error") (found by an
    outside test); the sessions reader now names the line and the range."""
    import nowblock as nb

    ref = validate_sessions(small_sessions, small_site)
    path = tmp_path / "sessions.csv"
    write_sessions_csv(ref, path, tz="Europe/Berlin")
    lines = path.read_text().splitlines()
    row = lines[2].split(",")
    for col, value in (("departure", "9999-12-31T23:59:59Z"), ("arrival", "2262-04-12T00:00:00Z"),
                       ("arrival", "1677-09-01T00:00:00Z")):
        bad = list(row)
        bad[lines[0].split(",").index(col)] = value
        path.write_text("\n".join([lines[0], lines[1], ",".join(bad), *lines[3:]]) + "\n")
        with pytest.raises(SessionsError, match=rf"line 3 \(session_id='{bad[0]}'\): {col} .* is outside the times "
                                                r"nowblock computes in \(1677-09-23 to 2262-04-09 UTC\)"):
            read_sessions_csv(path, small_site)
    # at the edge of the range a stay is still simulated
    edge = ref.iloc[:1].assign(arrival=pd.Timestamp("2262-04-08T12:00Z"), departure=pd.Timestamp("2262-04-09T00:00Z"))
    res = nb.simulate(nb.Scenario(small_site, edge), "edf", step="15min")
    assert res.metrics["energy_delivered_kwh"] > 0
