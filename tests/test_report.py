"""The simulation report (nowblock/sim/report.py) and ``nowblock simulate --policy a,b``.

What the report holds and that it needs nothing from outside; tests/test_page.py opens it in a
real browser and checks every chart is drawn.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nowblock.cli import main
from nowblock.sim.report import CHART_LIBRARY, _bucket, report_html, web_asset, write_report
from nowblock.sim.simulator import simulate


@pytest.fixture(scope="module")
def two_runs():
    from conftest import make_small_scenario

    sc = make_small_scenario()
    return sc, [simulate(sc, "edf"), simulate(sc, "uncontrolled")]


def _data(html: str) -> dict:
    m = re.search(r"<script type='application/json' id='nowblock-data'>(.*?)</script>", html, re.S)
    return json.loads(m.group(1))


def test_report_holds_the_runs(two_runs, tmp_path):
    sc, runs = two_runs
    path = write_report(runs, tmp_path, scenario=sc, parameters={"needs": "known"})
    assert path == tmp_path / "report.html"
    html = path.read_text()
    data = _data(html)
    assert [r["policy"] for r in data["results"]] == ["edf", "uncontrolled"]
    assert data["timezone"] == "Europe/Berlin"
    for run, r in zip(runs, data["results"]):
        ts = run.timeseries
        assert len(r["times"]) == len(ts) and r["bucket_steps"] == 1
        assert r["times"][0] == int(ts.index[0].timestamp())
        assert [f["id"] for f in r["fuses"]] == ["grid", "feeder-a"]
        grid = r["fuses"][0]
        assert grid["root"] and grid["limits"] == [{"label": "rating", "values": [63.0] * len(ts)}]
        assert np.allclose([x for x in grid["load_a"][1]], ts["grid_L2_a"].round(2))
        assert sorted(r["sessions"]["requested"]) == sorted(run.sessions["energy_requested_kwh"].round(3))
        assert r["metrics"]["demand_met"] == pytest.approx(run.metrics["demand_met"])
    # Uncontrolled overloads the small block (conftest: L2 well past 63 A); the report marks it.
    unc = data["results"][1]["fuses"][0]
    over = [x for x in unc["overload_a"] if x is not None]
    assert over and max(over) == pytest.approx(runs[1].timeseries["grid_L2_a"].max(), abs=0.01)
    assert all(x is None for x in data["results"][0]["fuses"][0]["overload_a"])  # EDF keeps to 63 A
    # The comparison, the metrics per policy, the parameters (site, caller's, scenario's).
    assert "id='cmp-demand'" in html and "id='cmp-peak'" in html
    assert "<th>edf</th><th>uncontrolled</th>" in html and "max_overload_a" in html
    for text in ("fuse feeder-a [A per phase]", "40/40/40 (under grid, 4 charging points)", "needs", "known",
                 "sessions in the scenario", "Europe/Berlin"):
        assert text in html, text


def test_report_is_self_contained(two_runs):
    sc, runs = two_runs
    html = report_html(runs[0], scenario=sc)
    # No resource from elsewhere: no src/href to a URL, no import, no fetch.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "fetch(" not in html and "@import" not in html
    # The charting library is inlined whole, with its licence notice.
    assert web_asset(CHART_LIBRARY["file"]) in html
    assert "Permission is hereby granted" in html and "uPlot 1.6.32" in html
    assert web_asset("charts.js") in html and web_asset("report.js") in html
    # One run: no comparison section.
    assert "id='comparison'" not in html and len(_data(html)["results"]) == 1


def test_long_runs_are_bucketed_without_hiding_peaks(two_runs):
    sc, runs = two_runs
    run = runs[1]
    data = _data(report_html(run, scenario=sc, max_points=50))["results"][0]
    k = data["bucket_steps"]
    assert k == int(np.ceil(len(run.timeseries) / 50)) and len(data["times"]) <= 50
    assert "max of every" in data["bucket_note"]
    for p, ph in enumerate(("L1", "L2", "L3")):
        assert max(x for x in data["fuses"][0]["load_a"][p] if x is not None) == pytest.approx(
            run.timeseries[f"grid_{ph}_a"].max(), abs=0.01)
    assert max(data["power"]["block_kw"]) == pytest.approx(run.metrics["peak_kw"], abs=0.01)
    # the bucket reducer itself: max and min per bucket, NaN-aware, a short last bucket
    v = np.array([1.0, 5.0, np.nan, 2.0, np.nan, np.nan, 7.0])
    assert _bucket(v, 2, "max").tolist()[:2] == [5.0, 2.0] and np.isnan(_bucket(v, 2, "max")[2])
    assert _bucket(v, 3, "min").tolist() == [1.0, 2.0, 7.0]


def test_report_refuses_no_results():
    with pytest.raises(ValueError, match="no simulation result"):
        report_html([])


def test_simulate_cli_several_policies(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["simulate", "--days", "1", "--policy", "edf,equal", "--out", str(out), "--quiet", "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert text.count("policy edf") == 1 and text.count("policy equal") == 1
    for name in ("edf", "equal"):
        assert {p.name for p in (out / name).iterdir()} == {"timeseries.csv", "sessions.csv", "metrics.json"}
    data = _data((out / "report.html").read_text())
    assert [r["policy"] for r in data["results"]] == ["edf", "equal"]
    for r in data["results"]:
        want = json.loads((out / r["policy"] / "metrics.json").read_text())
        got = r["metrics"]
        # Numbers within rounding, everything else equal (pytest >= 9.2 refuses approx on strings).
        number = {k for k, v in want.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert set(got) == set(want)
        assert {k: got[k] for k in number} == pytest.approx({k: want[k] for k in number}, rel=1e-12)
        assert {k: got[k] for k in set(want) - number} == {k: want[k] for k in set(want) - number}
    with pytest.raises(SystemExit, match="twice"):
        main(["simulate", "--policy", "edf,edf", "--out", str(tmp_path / "x")])


def test_simulate_cli_one_policy_writes_the_report_beside_its_files(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["simulate", "--days", "1", "--policy", "edf", "--out", str(out), "--quiet", "--no-plot"]) == 0
    assert (out / "report.html").is_file() and (out / "metrics.json").is_file()
    assert "report.html" in capsys.readouterr().out
