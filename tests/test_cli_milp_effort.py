"""``nowblock simulate --milp-effort X``: the MILP policy's ``milp_effort`` from the command line.

Found by an outside test: the command line had no way to set it, so a MILP run could not be
made repeatable (its MILP stage stops on a time budget; with ``milp_effort=0`` two processes
give identical results, with the default they differed in demand met, 0.6972 against 0.6960).
"""

from __future__ import annotations

import pandas as pd
import pytest

import nowblock.sim.simulator as simulator
from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.cli import main

T0 = pd.Timestamp("2026-03-02T16:00", tz="Europe/Berlin")


def _folder(tmp_path):
    """Six cars on a 20 A grid connection: the MILP has something to decide."""
    cps = tuple(ChargePoint(f"CP{k}", "grid", max_current_a=16.0) for k in range(6))
    site = Site("effort", (Fuse("grid", (20.0, 20.0, 20.0)),), cps)
    sessions = pd.DataFrame({
        "session_id": [f"s{k}" for k in range(6)], "charge_point_id": [f"CP{k}" for k in range(6)],
        "arrival": [T0 + pd.Timedelta(minutes=20 * k) for k in range(6)],
        "departure": [T0 + pd.Timedelta(hours=6 + k) for k in range(6)],
        "energy_kwh": [12.0, 20.0, 8.0, 25.0, 15.0, 10.0]})
    prices = pd.Series([0.30, 0.25, 0.20, 0.35] * 4, index=pd.date_range(T0, periods=16, freq="1h"))
    Scenario(site, sessions, prices=prices).to_dir(tmp_path / "scn")
    return tmp_path / "scn"


def _status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_milp_effort_reaches_the_policy_and_runs_repeat(tmp_path, monkeypatch):
    scn = _folder(tmp_path)
    seen = []
    real = simulator.simulate

    def spy(*args, **kwargs):
        seen.append((args[1], kwargs.get("policy_options")))
        return real(*args, **kwargs)

    monkeypatch.setattr(simulator, "simulate", spy)
    frames = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert _status(["simulate", "--scenario", str(scn), "--policy", "edf,milp", "--step", "15min",
                        "--milp-effort", "0", "--out", str(out), "--quiet", "--no-plot"]) == 0
        frames.append([pd.read_csv(out / "milp" / name) for name in ("timeseries.csv", "sessions.csv")])
        assert "milp_effort" in (out / "report.html").read_text()
    # the milp policy gets the option, the baseline none (it takes none)
    assert seen == [("edf", None), ("milp", {"milp_effort": 0.0})] * 2
    for first, second in zip(*frames):
        pd.testing.assert_frame_equal(first, second)
    assert frames[0][1]["energy_delivered_kwh"].sum() > 0


@pytest.mark.parametrize("argv, words", [
    (["--policy", "milp", "--milp-effort", "-1"], "--milp-effort -1 is not a number >= 0"),
    (["--policy", "milp", "--milp-effort", "nan"], "--milp-effort nan is not a number >= 0"),
    (["--policy", "edf", "--milp-effort", "0"], "--milp-effort is an option of the milp policy; --policy edf has none"),
])
def test_bad_milp_effort_is_one_line_exit_2(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    assert _status(["simulate", "--scenario", str(_folder(tmp_path)), "--out", str(out), "--quiet", "--no-plot",
                    *argv]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if " WARNING nowblock." not in ln]
    assert len(err) == 1 and err[0].startswith(f"nowblock simulate: {words}"), err
    assert not out.exists()
