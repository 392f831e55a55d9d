"""Studies: a grid of small blocks x policies on a local Ray, checked against plain simulate().

One local Ray (2 CPUs, no dashboard) serves the whole test session. Blocks are the generated
default block cut to one day and a few charging points, so each cell takes well under a
second; the MILP cells plan a 6 h horizon at 15 min steps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nowblock as nb
from nowblock.cli import main as cli_main
from nowblock.studies import Study, StudyError, plot_study, study

SMALL = {"days": 1, "n_charge_points": 4}
HEURISTICS = ["uncontrolled", "equal", "edf", "llf"]
# Metrics that measure the machine, not the simulation: they differ run to run.
TIMINGS = {"solve_seconds_median", "solve_seconds_max", "wall_seconds"}


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray", reason="the study extra (ray) is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    yield ray
    ray.shutdown()


def _plain(params: dict, policy: str, **options) -> dict:
    return nb.simulate(nb.Scenario.default(**params), policy, **options).metrics


def _assert_row_matches(row: pd.Series, metrics: dict) -> None:
    for k, v in metrics.items():
        if k in TIMINGS or k == "policy":
            continue
        assert row[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (row["cell_id"], k)


def test_study_on_ray_matches_simulate_records_failures_and_resumes(local_ray, tmp_path):
    grid = [{**SMALL, "grid_current_a": [20.0, 40.0]},
            {**SMALL, "congestion": 1.5}]  # the generator refuses this: 4 failing cells
    out = tmp_path / "st"
    table = study(scenario=grid, policies=HEURISTICS, out=out, timeseries=True, progress=False)
    assert len(table) == 12 and table.attrs["ran"] == 12
    ok, failed = table[table["status"] == "ok"], table[table["status"] == "error"]
    assert len(ok) == 8 and len(failed) == 4
    assert failed["error"].str.contains("congestion").all() and failed["traceback"].str.contains("Traceback").all()
    assert ok["worker_pid"].nunique() >= 1 and (ok["grid_current_a"] == ok["scenario.grid_current_a"]).all()
    # Every cell's metrics are those of the same simulation run with plain simulate().
    for _, row in ok.iterrows():
        params = {**SMALL, "grid_current_a": row["scenario.grid_current_a"]}
        _assert_row_matches(row, _plain(params, row["policy"]))
    # The table on disk is the table returned; the time series are partitioned by cell.
    on_disk = pd.read_parquet(out / "results.parquet")
    assert list(on_disk["cell_id"]) == list(table["cell_id"])
    assert len(list((out / "cells").glob("*.parquet"))) == 12
    ts = pd.read_parquet(out / "timeseries")
    first = ok.iloc[0]
    mine = ts[ts["cell_id"] == first["cell_id"]].drop(columns="cell_id").set_index("time")
    ref = nb.simulate(nb.Scenario.default(**SMALL, grid_current_a=first["scenario.grid_current_a"]),
                      first["policy"]).timeseries
    assert len(mine) == len(ref)
    np.testing.assert_allclose(mine["charging_kw"].to_numpy(float), ref["charging_kw"].to_numpy(float))
    assert (mine.index == ref.index).all()

    # A re-run skips the finished cells (their rows are not rewritten); failed ones run again.
    again = study(scenario=grid, policies=HEURISTICS, out=out, timeseries=True, progress=False)
    assert again.attrs["skipped"] == 8 and again.attrs["ran"] == 4
    kept = again.set_index("cell_id").loc[ok["cell_id"], "finished_at"]
    assert (kept.to_numpy() == ok["finished_at"].to_numpy()).all()
    # A grown study runs only what is new.
    grown = study(scenario=[{**SMALL, "grid_current_a": [20.0, 40.0, 60.0]}], policies=HEURISTICS, out=out,
                  timeseries=True, progress=False)
    assert grown.attrs["skipped"] == 8 and grown.attrs["ran"] == 4 and (grown["status"] == "ok").all()


def test_each_ray_worker_warms_the_milp_once(local_ray):
    """Numba compiles once per worker process: later MILP cells in a worker skip the warm-up."""
    opts = {"step": "15min", "horizon": "6h"}
    table = study(scenario={"days": 1, "n_charge_points": 3, "grid_current_a": [16.0, 25.0, 32.0, 40.0]},
                  policies=["milp"], simulate=opts, progress=False)
    assert (table["status"] == "ok").all(), table["error"].tolist()
    per_worker = table.groupby("worker_pid")
    assert per_worker.size().max() >= 2  # Ray reused a worker process for a second cell
    warmed = per_worker["warm_up_seconds"].apply(lambda s: int((s > 0.01).sum()))
    assert (warmed <= 1).all(), table[["worker_pid", "warm_up_seconds"]]
    row = table.iloc[0]
    _assert_row_matches(row, _plain({"days": 1, "n_charge_points": 3, "grid_current_a": 16.0}, "milp", **opts))


def test_study_file_cli_and_plots(local_ray, tmp_path):
    f = tmp_path / "sizes.toml"
    f.write_text('name = "sizes"\npolicies = ["uncontrolled", "equal"]\n'
                 '[scenario]\ndays = 1\nn_charge_points = [3, 4]\ngrid_current_a = [20, 40]\n'
                 '[simulate]\nstep = "15min"\n')
    out = tmp_path / "out"
    assert cli_main(["study", str(f), "--out", str(out), "--quiet"]) == 0
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 8 and (table["simulate.step"] == "15min").all()
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) == 2  # one per number of charging points, the other varying parameter
    assert all(p.stat().st_size > 20_000 for p in pngs)
    # A failing cell makes the command's exit code 1, and the table still has every cell.
    f.write_text(f.read_text().replace("n_charge_points = [3, 4]", "n_charge_points = [3, -1]"))
    assert cli_main(["study", str(f), "--out", str(out), "--quiet", "--no-plot"]) == 1
    table = pd.read_parquet(out / "results.parquet")
    assert (table["status"] == "error").sum() == 4 and len(table) == 8


def test_scenario_folders_in_process(tmp_path, small_scenario):
    small_scenario.to_dir(tmp_path / "small")
    st = Study(scenario=[], scenario_dirs=[str(tmp_path / "small")], policies=["equal", "edf"],
               simulate={"step": "15min"})
    table = study(st, engine="process", progress=False)
    assert (table["status"] == "ok").all() and table["scenario.dir"].nunique() == 1
    for _, row in table.iterrows():
        _assert_row_matches(row, nb.simulate(nb.Scenario.from_dir(tmp_path / "small"), row["policy"],
                                             step="15min").metrics)
    # Changing a folder's files changes its cells' ids: a resume never reuses stale results.
    before = {c.cell_id for c in st.cells()}
    (tmp_path / "small" / "prices.csv").unlink()
    assert before.isdisjoint({c.cell_id for c in st.cells()})


def test_folders_alone_make_the_study_in_every_form(tmp_path, small_scenario):
    """Folders without ``scenario`` run only the folders, whether given as keywords, a dict or
    a file; the default block comes in only when neither is given (or ``scenario={}`` asks)."""
    small_scenario.to_dir(tmp_path / "small")
    spec = {"scenario_dirs": [str(tmp_path / "small")], "policies": ["edf"]}
    (tmp_path / "only_dirs.toml").write_text('policies = ["edf"]\nscenario_dirs = ["small"]\n')
    forms = [Study(**spec), Study.from_dict(spec), Study.from_toml(tmp_path / "only_dirs.toml")]
    for st in forms:
        assert [c.scenario for c in st.cells()] == [{"dir": str((tmp_path / "small").resolve())}]
    assert len({c.cell_id for st in forms for c in st.cells()}) == 1
    assert [c.scenario for c in Study(policies=["edf"]).cells()] == [{}]
    both = Study(scenario={}, **spec)
    assert [c.scenario for c in both.cells()] == [{}, {"dir": str((tmp_path / "small").resolve())}]
    for st in (forms[0], both):  # study.json (to_dict) reads back as the study that ran
        assert Study.from_dict(st.to_dict()).cells() == st.cells()


def test_study_spec_grid_ids_and_errors(tmp_path):
    d = Study.default()
    cells = d.cells()
    assert len(cells) == 12 and {c.policy for c in cells} == {"uncontrolled", "equal", "edf", "milp"}
    assert len({c.cell_id for c in cells}) == 12
    assert [c.cell_id for c in Study.default().cells()] == [c.cell_id for c in cells]  # stable
    st = Study(scenario={"days": 1, "seed": [1, 2]}, policies=["equal"], simulate={"needs": ["known", "unknown"]})
    assert len(st.cells()) == 4
    with pytest.raises(StudyError, match="unknown generator parameter"):
        Study(scenario={"dayz": 1})
    with pytest.raises(StudyError, match="unknown policy"):
        Study(policies=["fastest"])
    with pytest.raises(StudyError, match="simulate: unknown option"):
        Study(simulate={"battery": 1})
    with pytest.raises(StudyError, match="empty list"):
        Study(scenario={"grid_current_a": []}).cells()
    with pytest.raises(StudyError, match="not a scenario folder"):
        Study(scenario_dirs=[str(tmp_path)])
    bad = tmp_path / "bad.toml"
    bad.write_text("policies = [")
    with pytest.raises(StudyError, match="cannot read"):
        Study.from_toml(bad)
    bad.write_text('polices = ["equal"]')
    with pytest.raises(StudyError, match="unknown key"):
        Study.from_toml(bad)


def test_plot_leaves_out_failed_cells(tmp_path):
    t = pd.DataFrame({"status": ["ok", "ok", "error"], "policy": ["equal", "equal", "edf"],
                      "grid_current_a": [40.0, 63.0, np.nan], "voltage_v": 230.0,
                      "demand_met": [0.9, 1.0, np.nan], "peak_kw": [27.0, 43.0, np.nan]})
    paths = plot_study(t, tmp_path, name="x")
    assert [p.name for p in paths] == ["x.png"] and paths[0].stat().st_size > 10_000



def test_plot_of_one_connection_size_shows_the_policies_side_by_side(tmp_path, monkeypatch):
    # A study over scenario folders, one size each: drawn against the size, every policy's point
    # fell on one x (equal values hid each other) and the rating was a one-point line only its
    # legend showed.
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1])
    t = pd.DataFrame({"status": "ok", "policy": ["edf", "equal"] * 2,
                      "scenario.dir": ["blocks/a", "blocks/a", "blocks/b", "blocks/b"],
                      "grid_current_a": [40.0, 40.0, 63.0, 63.0], "voltage_v": 230.0,
                      "demand_met": [1.0, 1.0, 0.8, 0.9], "peak_kw": [22.1, 21.6, 23.7, 23.7]})
    paths = plot_study(t, tmp_path, name="folders")
    assert [p.name for p in paths] == ["folders-01.png", "folders-02.png"] and len(figures) == 2
    for fig, size in zip(figures, (40.0, 63.0)):
        ax_met, ax_peak = fig.axes
        assert [lab.get_text() for lab in ax_peak.get_xticklabels()] == ["edf", "equal"]
        assert f"{size:g} A" in ax_peak.get_xlabel()
        for ax in (ax_met, ax_peak):
            xs = {float(x) for line in ax.get_lines() if line.get_marker() == "o" for x in line.get_xdata()}
            assert len(xs) == 2  # one x per policy: no marker hides another
        rating = [line for line in ax_peak.get_lines() if line.get_label().startswith("connection rating")]
        assert len(rating) == 1 and len(set(rating[0].get_xdata())) == 2  # drawn across the panel
        assert list(rating[0].get_ydata()) == pytest.approx([3e-3 * 230.0 * size] * 2)

def test_an_unreachable_cluster_fails_fast_with_a_clear_error():
    from nowblock.studies.runner import _check_reachable

    with pytest.raises(StudyError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        _check_reachable("127.0.0.1:1", timeout_s=5)
    _check_reachable("auto")  # Ray resolves "auto" itself


def test_an_axis_mixing_text_and_a_toml_datetime_runs_and_writes_its_table(tmp_path, small_scenario):
    """Found by an outside test: ``start = ["2026-...T01:00:00+02:00", 2026-...T02:00:00+02:00]``
    (text and a TOML datetime) stopped the study with ArrowTypeError; results.parquet was never
    written and a rerun stopped again."""
    import tomllib

    small_scenario.to_dir(tmp_path / "small")
    t0 = small_scenario.start
    text = (f'scenario_dirs = ["small"]\npolicies = ["equal"]\n[simulate]\nstep = "15min"\n'
            f'start = ["{t0.isoformat()}", {(t0 + pd.Timedelta(hours=1)).isoformat()}]\n')
    assert isinstance(tomllib.loads(text)["simulate"]["start"][1], __import__("datetime").datetime)
    (tmp_path / "s.toml").write_text(text)
    st = Study.from_toml(tmp_path / "s.toml")
    table = study(st, engine="process", progress=False, out=tmp_path / "out")
    assert (table["status"] == "ok").all() and len(table) == 2
    back = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert sorted(pd.to_datetime(back["simulate.start"]).tolist()) == [t0, t0 + pd.Timedelta(hours=1)]
