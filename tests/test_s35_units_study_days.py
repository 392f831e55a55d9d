"""A study's ``[simulate] days``: calendar days in the site's zone, as ``nowblock simulate --days``.

A study of scenario folders could not simulate their first week: ``days`` was not one of its
simulate keys (StudyError), and ``end`` is an instant (an hour off across a daylight saving switch).
"""

from __future__ import annotations

import pandas as pd
import pytest

from nowblock.block.scenario import Scenario
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.studies import Study, StudyError, study


def _folder(tmp_path):
    """Ten daily stays from Monday 23 March 2026 (Berlin; the clocks go forward on the 29th)."""
    site = Site("dst", (Fuse("grid", (63.0, 63.0, 63.0)),), (ChargePoint("CP01", "grid", max_current_a=16.0),),
                timezone="Europe/Berlin")
    day0 = pd.Timestamp("2026-03-23")
    sessions = pd.DataFrame({
        "session_id": [f"s{k}" for k in range(10)], "charge_point_id": "CP01",
        "arrival": [(day0 + pd.Timedelta(days=k)).tz_localize("Europe/Berlin") for k in range(10)],
        "departure": [(day0 + pd.Timedelta(days=k, hours=20)).tz_localize("Europe/Berlin") for k in range(10)],
        "energy_kwh": 5.0})
    return Scenario(site, sessions).to_dir(tmp_path / "week")


def test_study_days_are_the_site_calendar_days(tmp_path):
    table = study(scenario_dirs=[str(_folder(tmp_path))], policies=["edf"],
                  simulate={"step": "15min", "days": [1, 7]}, engine="process", progress=False)
    assert list(table["status"]) == ["ok", "ok"], table["error"].tolist()
    steps = dict(zip(table["simulate.days"], table["n_steps"]))
    assert steps == {1: 24 * 4, 7: 167 * 4}  # Monday 00:00 to the next Monday 00:00 local: 167 h
    assert dict(zip(table["simulate.days"], table["n_sessions"])) == {1: 1, 7: 7}


@pytest.mark.parametrize("simulate, words", [
    ({"days": 7, "end": "2026-03-30T00:00:00+02:00"}, "simulate: give end or days, not both"),
    ({"days": 0}, "simulate.days: expected a positive number of calendar days, got 0"),
    ({"days": [1, -2]}, "got -2"),
    ({"days": "7"}, "got '7'"),
])
def test_study_days_that_no_cell_could_run_are_refused(tmp_path, simulate, words):
    with pytest.raises(StudyError, match=words):
        Study(scenario_dirs=[str(_folder(tmp_path))], policies=["edf"], simulate=simulate)


@pytest.mark.parametrize("simulate, words", [
    ({"step": 5}, "simulate.step: expected a duration with a unit, such as '15min' or '24h', got the number 5"),
    ({"step": ["15min", "5"]}, "simulate.step: '5' has no unit"),
    ({"horizon": "24"}, "simulate.horizon: '24' has no unit"),
    ({"horizon": "-1h"}, "simulate.horizon: must be > 0"),
])
def test_study_step_or_horizon_without_unit_is_refused_before_any_cell(tmp_path, simulate, words):
    """Every cell of such a study failed (``step = 5`` in TOML read as 5 ns: a MemoryError) or, for
    a horizon, ran without look-ahead."""
    with pytest.raises(StudyError, match=words):
        Study(scenario_dirs=[str(_folder(tmp_path))], policies=["edf"], simulate=simulate)
