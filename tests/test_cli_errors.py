"""``nowblock``'s user errors: one line on stderr and exit status 2, as docs/reference/cli.md says.

An unknown policy, a bad duration, a ``--days`` that is not positive, a missing folder, a
sessions file without sessions: each used to exit 1 (some as "an internal error"), or, for a
negative ``--days``, to report perfect results.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import nowblock.cli.simulate as sim_cli
from nowblock.cli import main

SITE_TOML = 'name = "cli"\n[[fuses]]\nid = "grid"\nmax_current_a = 40\n' \
            '[[charge_points]]\nid = "CP01"\nfuse = "grid"\nmax_current_a = 16\nphases = 1\n' \
            '[[charge_points]]\nid = "CP02"\nfuse = "grid"\nmax_current_a = 32\n'
HEADER = "session_id,charge_point_id,arrival,departure,energy_kwh\n"


def _folder(tmp_path, rows: str = "x,CP02,2026-03-02T18:00:00+01:00,2026-03-02T20:00:00+01:00,5\n"):
    path = tmp_path / "scn"
    path.mkdir(exist_ok=True)
    (path / "site.toml").write_text(SITE_TOML)
    (path / "sessions.csv").write_text(HEADER + rows)
    return path


def _exit_status(argv) -> int:
    """``main``'s exit status: what it returns, or the code of the SystemExit it raises (argparse
    and bad options end the program with status 2, as the console script does)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _one_user_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " WARNING nowblock." not in line]
    assert len(err) == 1, err
    assert "internal error" not in err[0] and "Traceback" not in err[0], err[0]
    return err[0]


@pytest.fixture
def no_loading(monkeypatch):
    """Options must be refused before the scenario is read."""
    def refuse(*args, **kwargs):
        raise AssertionError("the scenario was loaded before the options were checked")

    monkeypatch.setattr(sim_cli, "load_scenario", refuse)


@pytest.mark.parametrize("argv, expected", [
    (["--policy", "fastest"], "nowblock simulate: --policy: unknown policy 'fastest'; choose one of"),
    (["--policy", "edf,fastest"], "unknown policy 'fastest'"),
    (["--policy", "edf,EDF"], "--policy names edf twice"),
    (["--step", "quarter"], "nowblock simulate: --step 'quarter' is not a duration"),
    (["--step=-5min"], "--step '-5min' is not a positive duration"),
    (["--horizon", "0h"], "--horizon '0h' is not a positive duration"),
    (["--days", "-1"], "nowblock simulate: --days -1 is not a positive number of days"),
    (["--days", "0"], "--days 0 is not a positive number of days"),
    (["--days", "nan"], "--days nan is not a positive number of days"),
])
def test_bad_options_exit_2_before_the_scenario_is_read(tmp_path, capsys, no_loading, argv, expected):
    out = tmp_path / "out"
    assert _exit_status(["simulate", "--scenario", str(tmp_path), "--out", str(out), "--quiet", *argv]) == 2
    assert expected in _one_user_error(capsys)
    assert not out.exists()  # no results, let alone perfect ones


def test_missing_scenario_folder_exits_2(tmp_path, capsys):
    assert _exit_status(["simulate", "--scenario", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "is neither 'default' nor a folder" in _one_user_error(capsys)


def test_sessions_file_without_sessions_exits_2(tmp_path, capsys):
    path = _folder(tmp_path, rows="")
    assert _exit_status(["simulate", "--scenario", str(path), "--policy", "edf", "--out", str(tmp_path / "o"),
                         "--quiet", "--no-plot"]) == 2
    line = _one_user_error(capsys)
    assert "sessions.csv: no sessions (only a header): nothing to simulate" in line, line


def test_bad_log_level_exits_2(tmp_path, capsys):
    assert _exit_status(["simulate", "--log-level", "LOUD", "--out", str(tmp_path / "o")]) == 2
    assert "--log-level 'LOUD' is not one of" in _one_user_error(capsys)


def test_study_bad_workers_exits_2(tmp_path, capsys):
    assert _exit_status(["study", "default", "--workers", "0", "--out", str(tmp_path / "o")]) == 2
    assert _one_user_error(capsys) == "nowblock study: --workers must be at least 1, got 0"


def test_the_program_exits_2_with_one_line(tmp_path):
    """The installed program, not only main(): an unknown policy used to exit 1 as an internal error."""
    for argv in (["--policy", "fastest"], ["--days", "-1"], ["--scenario", str(tmp_path / "nope")]):
        proc = subprocess.run([sys.executable, "-m", "nowblock.cli", "simulate", "--out", str(tmp_path / "o"), *argv],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "internal error" not in proc.stderr, proc.stderr


def test_policy_names_are_case_insensitive_as_in_python():
    assert sim_cli.policy_list(" EDF , milp") == ["EDF", "milp"]


def test_a_warning_about_the_sessions_is_printed_once_by_its_line(tmp_path):
    """End to end: read by the file reader, checked again by Scenario, then simulated."""
    path = _folder(tmp_path, rows="late,CP01,2026-03-02T20:00:00+01:00,2026-03-02T20:30:00+01:00,30\n"
                                  "early,CP02,2026-03-02T18:00:00+01:00,2026-03-02T18:30:00+01:00,30\n")
    proc = subprocess.run([sys.executable, "-m", "nowblock.cli", "simulate", "--scenario", str(path), "--policy",
                           "edf", "--out", str(tmp_path / "o"), "--quiet", "--no-plot", "--step", "15min"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "more than the car can draw" in line]
    assert len(said) == 1 and "first line 2 (session_id='late')" in said[0], proc.stderr


def test_serve_refuses_a_base_load_history_without_offsets(tmp_path):
    """``serve --base-load`` took local times without an offset as UTC without a word: the flats'
    18:00 peak was forecast for 19:00 (20:00 in summer) and the cars planned into it (found by an
    outside test). The file is now checked as a scenario's base_load.csv before any port opens."""
    site = tmp_path / "site.toml"
    site.write_text(SITE_TOML)
    hist = tmp_path / "history.csv"
    hist.write_text("time,kw\n2026-12-01T17:45:00,10\n2026-12-01T18:00:00,60\n")  # Dortmund wall clock
    try:
        proc = subprocess.run([sys.executable, "-m", "nowblock", "serve", "--site", str(site), "--base-load", str(hist),
                               "--port", "0", "--db", str(tmp_path / "x.sqlite")],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("serve started with a base-load history it reads an hour off")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.strip().splitlines() if " WARNING " not in line]
    assert len(err) == 1 and err[0].startswith("nowblock serve: "), err
    assert f"{hist}: line 2" in err[0] and "no UTC offset" in err[0], err[0]


def test_the_controllers_base_load_history_is_read_as_a_scenarios_file(tmp_path):
    """Found by a review: ``serve`` checked ``--base-load``, but the controller's options read the
    file again on their own, taking local times without an offset as UTC (an 18:00 peak planned
    at 19:00) for every caller of ``attach(args=...)`` other than ``nowblock serve``."""
    import argparse

    from nowblock.block.scenario import ScenarioError
    from nowblock.block.site import ChargePoint, Fuse, Site
    from nowblock.control.wiring import _serve_options

    site = Site("s", (Fuse("grid", (63.0,) * 3),), (ChargePoint("CP1", "grid", 16.0, 6.0),), timezone="Europe/Berlin")
    naive = tmp_path / "naive.csv"
    naive.write_text("time,kw\n2026-12-01T17:45:00,10\n2026-12-01T18:00:00,60\n")
    with pytest.raises(ScenarioError, match="offset"):
        _serve_options(argparse.Namespace(base_load=str(naive)), site)
    good = tmp_path / "good.csv"
    good.write_text("time,kw\n2026-12-01T17:45:00+01:00,10\n2026-12-01T18:00:00+01:00,60\n")
    h = _serve_options(argparse.Namespace(base_load=str(good)), site)["base_load_history"]
    assert h.idxmax() == pd.Timestamp("2026-12-01 17:00", tz="UTC")


def test_serve_learns_the_base_load_in_the_sites_own_clock(tmp_path):
    """Found by an outside test: ``serve --base-load`` built its forecaster on Berlin's clock, so a
    New York block's Friday 18:00 peak was learnt as a Saturday 00:00 one."""
    import argparse

    from nowblock.block.site import ChargePoint, Fuse, Site
    from nowblock.control.wiring import _serve_options

    site = Site("ny", (Fuse("grid", (63.0,) * 3),), (ChargePoint("CP1", "grid", 16.0, 6.0),),
                timezone="America/New_York")
    hist = tmp_path / "load.csv"
    hist.write_text("time,kw\n2026-12-01T17:45:00-05:00,10\n2026-12-01T18:00:00-05:00,60\n")
    cal = _serve_options(argparse.Namespace(base_load=str(hist)), site)["forecaster"].model.calendar
    assert cal.tz == "America/New_York" and cal.country == "US"
