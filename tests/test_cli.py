"""``nowblock simulate`` end to end in a temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from nowblock.cli import main
from nowblock.cli.simulate import format_metrics

CONTRACT = ["energy_requested_kwh", "energy_delivered_kwh", "demand_met", "peak_kw", "max_overload_a",
            "cost_eur", "solve_seconds_median"]


@pytest.fixture
def scenario_dir(small_scenario, tmp_path):
    return small_scenario.to_dir(tmp_path / "small")


def _check_outputs(out, policy):
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(CONTRACT) <= set(metrics) and metrics["policy"] == policy
    ts = pd.read_csv(out / "timeseries.csv", index_col="time")
    assert len(ts) == metrics["n_steps"] and "grid_L1_limit_a" in ts.columns
    png = (out / "load.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # One time convention in every file: the site's zone (Europe/Berlin) with its ISO 8601 offset.
    sessions = pd.read_csv(out / "sessions.csv")
    for col in (ts.index.to_series(), sessions["arrival"], sessions["departure"]):
        assert col.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0[12]:00").all(), col.iloc[0]
    first = pd.Timestamp(sessions["arrival"].iloc[0])
    assert first.utcoffset() == first.tz_convert("Europe/Berlin").utcoffset()
    return metrics


def test_simulate_a_scenario_folder(scenario_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["simulate", "--scenario", str(scenario_dir), "--policy", "edf", "--out", str(out),
                 "--step", "10min"])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = _check_outputs(out, "edf")
    for name in metrics:  # every metric is in the printed table
        assert name in printed
    assert metrics["max_overload_a"] == 0.0
    assert "wrote" in printed and str(out) in printed


def test_simulate_default_scenario_for_one_day(tmp_path, capsys):
    out = tmp_path / "default"
    assert main(["simulate", "--days", "1", "--policy", "uncontrolled", "--out", str(out), "--quiet"]) == 0
    metrics = _check_outputs(out, "uncontrolled")
    assert metrics["n_steps"] == 24 * 12
    printed = capsys.readouterr().out
    assert "policy uncontrolled" in printed and "max_overload_a" in printed


def test_bad_scenario_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="neither 'default' nor a folder"):
        main(["simulate", "--scenario", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])


def test_bad_step_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--step"):
        main(["simulate", "--step", "soon", "--out", str(tmp_path / "o")])


def test_format_metrics_aligns_every_metric():
    text = format_metrics({"peak_kw": 12.5, "max_overload_a": 0.0, "policy": "edf", "solve_seconds_median": 2e-5})
    lines = text.splitlines()
    assert len(lines) == 6 and "12.5" in text and "2e-05" in text and "edf" in text


def test_console_script(scenario_dir, tmp_path):
    exe = shutil.which("nowblock")
    cmd = [exe] if exe else [sys.executable, "-m", "nowblock.cli"]
    out = tmp_path / "cli-out"
    proc = subprocess.run([*cmd, "simulate", "--scenario", str(scenario_dir), "--policy", "equal",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "max_overload_a" in proc.stdout and "demand_met" in proc.stdout
    _check_outputs(out, "equal")


def test_bad_input_is_one_line_with_file_line_and_field(scenario_dir, tmp_path):
    """What a user meets: one line on stderr naming file, line and field; exit code 2; no traceback."""
    path = scenario_dir / "sessions.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("+01:00", "", 1)  # line 4 of the file: an arrival without offset
    path.write_text("\n".join(lines) + "\n")
    exe = shutil.which("nowblock")
    cmd = [exe] if exe else [sys.executable, "-m", "nowblock.cli"]
    proc = subprocess.run([*cmd, "simulate", "--scenario", str(scenario_dir), "--policy", "equal",
                           "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "sessions.csv: line 4 (session_id=" in err[0] and "has no UTC offset" in err[0], err[0]
    # --debug shows the traceback instead
    proc = subprocess.run([*cmd, "simulate", "--debug", "--scenario", str(scenario_dir), "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "SessionsError" in proc.stderr


def test_internal_errors_are_one_line_too(monkeypatch, capsys, tmp_path):
    import nowblock.cli.simulate as sim_cli

    def boom(args):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(sim_cli, "run", boom)
    assert main(["simulate", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nowblock simulate: RuntimeError: solver exploded (an internal error: run again with --debug "
                   "for the traceback and report it)"]
    with pytest.raises(RuntimeError):
        main(["simulate", "--out", str(tmp_path), "--debug"])


def test_help_reads_as_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text and ":class:" not in text
    for name in ("simulate", "serve", "demo", "study", "--debug", "--log-level"):
        assert name in text


def test_log_level_is_accepted_after_the_sub_command(tmp_path, scenario_dir):
    from nowblock.cli import build_parser

    args = build_parser().parse_args(["serve", "--site", "x.toml", "--log-level", "DEBUG"])
    assert args.log_level == "DEBUG"
    args = build_parser().parse_args(["--log-level", "ERROR", "serve", "--site", "x.toml"])
    assert args.log_level == "ERROR" and args.debug is False


def test_demo_start_counts_calendar_days_on_the_site_wall_clock():
    """Day 3 at 17:30 of a week starting before the spring DST change is 17:30 local, not 18:30 (3 x 24 h)."""
    from nowblock.cli.demo import demo_start

    start = pd.Timestamp("2026-03-27 10:00", tz="Europe/Berlin")
    t0 = demo_start(start, "Europe/Berlin", 3, 17.5)
    assert t0.tz_convert("Europe/Berlin") == pd.Timestamp("2026-03-30 17:30", tz="Europe/Berlin")
    # A wall time the change skips (02:30 on 29 March) moves forward to the first that exists.
    skipped = demo_start(start, "Europe/Berlin", 2, 2.5).tz_convert("Europe/Berlin")
    assert skipped.hour == 3 and skipped.utcoffset() == pd.Timedelta(hours=2)
    # The autumn change: day 1 at 12:00 of a week starting 24 October is noon local on 25 October.
    autumn = demo_start(pd.Timestamp("2026-10-24 08:00", tz="Europe/Berlin"), "Europe/Berlin", 1, 12)
    assert autumn.tz_convert("Europe/Berlin") == pd.Timestamp("2026-10-25 12:00", tz="Europe/Berlin")
