"""Site model: validation errors name the key, TOML round trip, phase incidence by hand."""

from __future__ import annotations

import re
import textwrap
import tomllib

import numpy as np
import pandas as pd
import pytest

from nowblock.block.site import CapWindow, ChargePoint, Fuse, Site, SiteError, SiteFileNotFoundError

GOOD = """
name = "t"
voltage_v = 230

[[fuses]]
id = "grid"
max_current_a = [100, 100, 100]

[[fuses]]
id = "feeder-a"
parent = "grid"
max_current_a = [63, 63, 63]

[[charge_points]]
id = "CP01"
fuse = "feeder-a"
max_current_a = 32
min_current_a = 6
phases = 3
phase_rotation = "L1L2L3"
"""


def write(tmp_path, text: str):
    p = tmp_path / "site.toml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_file_loads(tmp_path):
    site = Site.from_toml(write(tmp_path, GOOD))
    assert site.fuse_ids == ["grid", "feeder-a"]
    assert site.charge_point("CP01").max_current_a == 32.0
    assert site.root.id == "grid"


@pytest.mark.parametrize(
    "old, new, key",
    [
        # a cycle: feeder-a's parent is feeder-b, whose parent is feeder-a
        ('parent = "grid"\nmax_current_a = [63, 63, 63]',
         'parent = "feeder-b"\nmax_current_a = [63, 63, 63]\n\n[[fuses]]\nid = "feeder-b"\nparent = "feeder-a"\n'
         "max_current_a = [63, 63, 63]", r"fuses\[1\]\.parent: cycle feeder-a -> feeder-b -> feeder-a"),
        ('parent = "grid"', 'parent = "nowhere"', r"fuses\[1\]\.parent: unknown fuse 'nowhere'"),
        ('fuse = "feeder-a"', 'fuse = "feeder-z"', r"charge_points\[0\]\.fuse: unknown fuse 'feeder-z'"),
        ("min_current_a = 6", "min_current_a = 40", r"charge_points\[0\]\.min_current_a: 40.0 A is above"),
        ('phase_rotation = "L1L2L3"', 'phase_rotation = "L1L1L2"', r"charge_points\[0\]\.phase_rotation"),
        ('phase_rotation = "L1L2L3"', 'phase_rotation = "L1L2"', r"charge_points\[0\]\.phase_rotation"),
        ('id = "feeder-a"', 'id = "grid"', r"fuses\[1\]\.id: duplicate fuse id 'grid'"),
        ("phases = 3", "phases = 2", r"charge_points\[0\]\.phases"),
        ("max_current_a = 32", 'max_current_a = "32"', r"charge_points\[0\]\.max_current_a: expected a number"),
        ("max_current_a = 32", "max_curent_a = 32", r"charge_points\[0\]\.max_curent_a: unknown key"),
        ("max_current_a = [63, 63, 63]", "max_current_a = [63, 63]", r"fuses\[1\]\.max_current_a: expected three"),
        ("max_current_a = [100, 100, 100]", "max_current_a = [100, 0, 100]", r"fuses\[0\]\.max_current_a: ratings"),
        ('parent = "grid"\n', "", r"fuses: exactly one fuse must have no parent"),
        ('id = "CP01"\n', "", r"charge_points\[0\]\.id: missing"),
        ('voltage_v = 230', 'voltage_v = -230', r"voltage_v: expected the phase-to-neutral voltage, 100..300 V"),
        ('voltage_v = 230', 'voltage_v = 400', r"voltage_v: .*400 V is line to line\), got 400"),
        # implausible ratings: a low-voltage connection, an AC charging point
        ("max_current_a = [100, 100, 100]", "max_current_a = [100, 11000, 100]",
         r"fuses\[0\]\.max_current_a: 11000 A per phase is more than a low-voltage connection carries"),
        ("max_current_a = 32", "max_current_a = 125", r"charge_points\[0\]\.max_current_a: .* got 125"),
        # TOML has inf and nan: either would switch a limit off without a word
        ("max_current_a = [100, 100, 100]", "max_current_a = [100, inf, 100]", r"fuses\[0\]\.max_current_a: ratings"),
        ("max_current_a = 32", "max_current_a = inf", r"charge_points\[0\]\.max_current_a: expected 0 < A per phase <= 80"),
        ("max_current_a = 32", "max_current_a = nan", r"charge_points\[0\]\.max_current_a: expected 0 < A per phase"),
        ('voltage_v = 230', 'voltage_v = inf', r"voltage_v: expected the phase-to-neutral voltage"),
        ('voltage_v = 230', 'voltage_v = 230\ntimezone = "Mars/Olympus"', r"timezone: unknown time zone 'Mars/Olympus'"),
        ('voltage_v = 230', 'voltage_v = 230\nmax_unbalance_a = nan', r"max_unbalance_a: must be >= 0"),
        ('phases = 3', 'phases = 3\ncaps = [{start = "17:00", end = "21:00", max_current_a = nan}]',
         r"charge_points\[0\]\.caps\[0\]\.max_current_a"),
    ],
)
def test_bad_site_names_the_key(tmp_path, old, new, key):
    assert old in GOOD
    with pytest.raises(SiteError, match=key):
        Site.from_toml(write(tmp_path, GOOD.replace(old, new, 1)))


def test_duplicate_charge_point_id(tmp_path):
    cp = GOOD[GOOD.index("[[charge_points]]"):]
    with pytest.raises(SiteError, match=r"charge_points\[1\]\.id: duplicate charging point id 'CP01'"):
        Site.from_toml(write(tmp_path, GOOD + "\n" + cp))


def test_bad_cap_window(tmp_path):
    text = GOOD + '\n[[charge_points.caps]]\nstart = "25:00"\nend = "06:00"\nmax_current_a = 6\n'
    with pytest.raises(SiteError, match=r"charge_points\[0\]\.caps\[0\]"):
        Site.from_toml(write(tmp_path, text))
    text = GOOD + '\n[[charge_points.caps]]\nstart = "22:00"\nmax_current_a = 6\n'
    with pytest.raises(SiteError, match=r"charge_points\[0\]\.caps\[0\]\.end: missing"):
        Site.from_toml(write(tmp_path, text))


def test_malformed_toml(tmp_path):
    with pytest.raises(SiteError, match="not valid TOML"):
        Site.from_toml(write(tmp_path, GOOD.replace('id = "grid"', 'id = "grid')))


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "site.toml"
    with pytest.raises(SiteFileNotFoundError, match=re.escape(str(missing)) + ": no such site file"):
        Site.from_toml(missing)
    # Callers may catch it either way.
    with pytest.raises(FileNotFoundError):
        Site.from_toml(missing)
    with pytest.raises(SiteError):
        Site.from_toml(missing)


def test_errors_from_objects_name_the_key_too():
    with pytest.raises(SiteError, match=r"charge_points\[1\]\.fuse"):
        Site("x", (Fuse("grid", (10, 10, 10)),), (ChargePoint("A", "grid"), ChargePoint("B", "gone")))
    with pytest.raises(SiteError, match=r"fuses\[0\]\.parent: cycle"):
        Site("x", (Fuse("a", (10, 10, 10), parent="b"), Fuse("b", (10, 10, 10), parent="a")), ())


def test_root_is_moved_first():
    site = Site(
        "x",
        (Fuse("feeder", (40, 40, 40), parent="grid"), Fuse("grid", (63, 63, 63))),
        (ChargePoint("A", "feeder"),),
    )
    assert site.fuse_ids == ["grid", "feeder"]
    np.testing.assert_array_equal(site.limits_a[0], [63, 63, 63])


def test_toml_round_trip_keeps_everything(tmp_path, small_site):
    cps = list(small_site.charge_points)
    cps[0] = ChargePoint(
        "CP01", "feeder-a", max_current_a=16.0, phase_rotation="L1L2L3",
        caps=(CapWindow("22:00", "06:00", 10.0), CapWindow("17:00", "20:00", 6.0)),
        password_hash="sha256$abc",
    )
    site = Site(small_site.name, small_site.fuses, tuple(cps), voltage_v=231.0, max_unbalance_a=20.0,
                timezone="Europe/Berlin", extra={"operator": "DSW21", "meta": {"city": "Dortmund"}})
    path = tmp_path / "site.toml"
    site.to_toml(path)
    back = Site.from_toml(path)
    assert back == site
    assert back.max_unbalance_a == 20.0
    assert back.charge_points[0].caps == site.charge_points[0].caps
    assert back.extra == site.extra
    # A second trip writes the same text.
    back.to_toml(tmp_path / "again.toml")
    assert (tmp_path / "again.toml").read_text() == path.read_text()


def test_optional_keys_keep_their_defaults(tmp_path):
    text = """
    [[fuses]]
    id = "grid"
    max_current_a = 50
    [[charge_points]]
    id = "A"
    fuse = "grid"
    """
    site = Site.from_toml(write(tmp_path, text))
    cp = site.charge_points[0]
    assert (cp.max_current_a, cp.min_current_a, cp.phases, cp.phase_rotation) == (32.0, 6.0, 3, "L1L2L3")
    assert site.max_unbalance_a is None and site.voltage_v == 230.0
    assert site.fuses[0].max_current_a == (50.0, 50.0, 50.0)


def test_phase_incidence_by_hand(small_site):
    # Rows: grid L1 L2 L3, feeder-a L1 L2 L3.  Columns: one car each, as listed.
    cars = [
        ("CP02", 1),  # rotation L2L3L1: a single-phase car loads grid L2, behind feeder-a
        ("CP03", 1),  # rotation L3L1L2: single-phase on grid L3
        ("CP04", 2),  # rotation L1L2L3: a two-phase car loads L1 and L2
        ("CP02", 2),  # rotation L2L3L1: a two-phase car loads L2 and L3
        ("CP05", 3),  # three-phase car straight on the grid connection
        ("CP06", 3),  # three-phase car on a single-phase charger wired to L2: L2 only
        ("CP05", 1),  # rotation L3L1L2 on the grid connection: L3 only
    ]
    expected = np.array(
        [  # CP02/1 CP03/1 CP04/2 CP02/2 CP05/3 CP06/3 CP05/1
            [0, 0, 1, 0, 1, 0, 0],  # grid L1
            [1, 0, 1, 1, 1, 1, 0],  # grid L2
            [0, 1, 0, 1, 1, 0, 1],  # grid L3
            [0, 0, 1, 0, 0, 0, 0],  # feeder-a L1
            [1, 0, 1, 1, 0, 0, 0],  # feeder-a L2
            [0, 1, 0, 1, 0, 0, 0],  # feeder-a L3
        ],
        dtype=float,
    )
    idx = small_site.cp_index([c for c, _ in cars])
    a = small_site.phase_incidence(idx, np.array([k for _, k in cars]))
    np.testing.assert_array_equal(a, expected)
    current = np.array([10.0, 20.0, 16.0, 8.0, 6.0, 30.0, 7.0])
    got = small_site.fuse_phase_currents_a(current, idx, np.array([k for _, k in cars]))
    np.testing.assert_allclose(
        got,
        [[16 + 6, 10 + 16 + 8 + 6 + 30, 20 + 8 + 6 + 7], [16, 10 + 16 + 8, 20 + 8]],
    )


def test_grid_phases_and_usage(small_site):
    assert small_site.charge_point("CP03").grid_phases == (2, 0, 1)
    used = small_site.phase_usage(small_site.cp_index(["CP03", "CP06"]), np.array([3, 3]))
    np.testing.assert_array_equal(used, [[True, True, True], [False, True, False]])


def test_base_load_current_and_power(small_site):
    # 69 kW over three phases at 230 V is 100 A per phase.
    np.testing.assert_allclose(small_site.base_load_phase_current_a(np.array([69.0, 0.0])), [[100] * 3, [0] * 3])
    assert small_site.current_to_kw(16.0, 3) == pytest.approx(11.04)
    assert small_site.current_to_kw(32.0, 1) == pytest.approx(7.36)


def test_cap_windows_wrap_midnight_in_local_time():
    cp = ChargePoint("A", "grid", caps=(CapWindow("22:00", "06:00", 10.0), CapWindow("05:00", "07:00", 6.0)))
    site = Site("x", (Fuse("grid", (63, 63, 63)),), (cp,))
    # 21:30 UTC is 22:30 in Berlin (winter): inside the night window.
    times = pd.DatetimeIndex(["2026-03-02 20:30", "2026-03-02 21:30", "2026-03-03 04:30", "2026-03-03 06:30"], tz="UTC")
    np.testing.assert_array_equal(site.cap_current_a(times)[:, 0], [np.inf, 10.0, 6.0, np.inf])


def test_with_root_limit(small_site):
    tight = small_site.with_root_limit(40.0)
    assert tight.fuses[0].max_current_a == (40.0, 40.0, 40.0)
    assert tight.fuses[1] == small_site.fuses[1]


def test_a_rating_above_a_low_voltage_connection_is_an_aggregate_cap_only_over_enough_points(tmp_path, caplog):
    from nowblock.testing import make_test_site

    # 400 points of 16 A under a 5,000 A cap: they could draw 6,400 A together, so it is a cap.
    big = make_test_site(400, grid_a=5000.0, max_current_a=16.0)
    big.to_toml(tmp_path / "big.toml")
    with caplog.at_level("WARNING", logger="nowblock.block.site"):
        back = Site.from_toml(tmp_path / "big.toml")
    assert back.root.max_current_a[0] == 5000.0
    assert any("aggregate cap" in r.getMessage() for r in caplog.records)
    # The same rating over 100 such points (1,600 A together) reads as a power written as a current.
    with pytest.raises(SiteError, match=r"fuses\[0\]\.max_current_a: 5000 A per phase is more than .* 1600 A"):
        make_test_site(100, grid_a=5000.0, max_current_a=16.0)


def test_a_cap_window_whose_start_is_its_end_is_refused():
    """Found by an outside test: a 0 A cap from 06:00 to 06:00 was accepted and capped nothing."""
    text = """name = "c"
[[fuses]]
id = "grid"
max_current_a = 40
[[charge_points]]
id = "CP01"
fuse = "grid"
caps = [{start = "06:00", end = "06:00", max_current_a = 0}]
"""
    with pytest.raises(SiteError, match=r"charge_points\[0\]\.caps\[0\]: start and end are both '06:00'"):
        Site.from_dict(tomllib.loads(text))


def test_a_point_whose_minimum_no_fuse_on_its_way_allows_is_warned_about(caplog):
    """Found by an outside test: a block whose grid fuse (5 A) was below every charger's 6 A
    minimum was planned as all zeros with nothing said."""
    def table(sub):
        return {"fuses": [{"id": "grid", "max_current_a": [40, 40, 40]},
                          {"id": "sub", "parent": "grid", "max_current_a": sub}],
                "charge_points": [{"id": "CP1", "fuse": "sub", "max_current_a": 16, "min_current_a": 6, "phases": 1,
                                   "phase_rotation": "L2L3L1"},
                                  {"id": "CP2", "fuse": "grid", "max_current_a": 16, "min_current_a": 6}]}

    with caplog.at_level("WARNING", logger="nowblock.block.site"):
        Site.from_dict(table([40, 5, 40]))
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "CP1" in msgs[0] and "sub" in msgs[0] and "L2" in msgs[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="nowblock.block.site"):
        Site.from_dict(table([5, 40, 40]))
    assert not caplog.records  # CP1's first phase is L2: its 40 A allow the minimum


def test_a_step_is_capped_by_every_window_it_overlaps_also_past_midnight():
    site = Site("s", (Fuse("grid", (63.0,) * 3),),
                (ChargePoint("CP1", "grid", 16.0, 6.0, caps=(CapWindow("17:10", "18:00", 8.0),
                                                            CapWindow("23:50", "00:05", 10.0))),), timezone="UTC")
    t = pd.DatetimeIndex(["2026-03-02 17:00", "2026-03-02 18:00", "2026-03-02 23:45", "2026-03-03 00:05",
                          "2026-03-02 16:55"], tz="UTC")
    np.testing.assert_array_equal(site.cap_current_a(t)[:, 0], [np.inf, np.inf, np.inf, np.inf, np.inf])
    # 16:55 + 15 min ends where the window starts: not capped.
    np.testing.assert_array_equal(site.cap_current_a(t, "15min")[:, 0], [8.0, np.inf, 10.0, np.inf, np.inf])
    np.testing.assert_array_equal(site.cap_current_a(t, [60.0, 60.0, 60.0, 60.0, 1200.0])[:, 0],
                                  [np.inf, np.inf, np.inf, np.inf, 8.0])
    assert (site.cap_current_a(t, "1D")[:, 0] == 8.0).all()  # a day-long step meets both windows
