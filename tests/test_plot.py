"""The load plot a planner puts in a report: every fuse, its limit, units, one legend outside."""

from __future__ import annotations

import numpy as np
import pandas as pd

import nowblock as nb
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.sim.plot import plot_load


def _labels(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_every_fuse_gets_a_panel_with_its_limit(small_scenario, tmp_path):
    res = nb.simulate(small_scenario, "uncontrolled")
    fig = res.plot(tmp_path / "load.png", title="small")
    site = small_scenario.site
    axes = fig.axes
    assert len(axes) == 3 + len(site.fuses) - 1
    titles = [ax.get_title(loc="left") for ax in axes]
    assert titles[:3] == [f"grid connection {site.root.id!r}, phase {p}" for p in ("L1", "L2", "L3")]
    assert {f"fuse {f.id!r}, phases L1-L3" for f in site.fuses[1:]} == set(titles[3:])
    for ax in axes:
        assert ax.get_ylabel() == "current [A]"
        # the dashed limit line of each panel sits at the fuse's rating
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert dashed
    assert "Europe/Berlin" in axes[-1].get_xlabel() and "from" in axes[-1].get_xlabel()
    # one legend, outside the panels (right of every axes)
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in axes)
    fig.canvas.draw()
    leg_x0 = fig.legends[0].get_window_extent().x0
    assert all(leg_x0 >= ax.get_window_extent().x1 for ax in axes)
    assert "other load (households)" in _labels(fig) and "fuse limit" in _labels(fig)
    assert (tmp_path / "load.png").read_bytes()[:4] == b"\x89PNG"


def test_no_households_in_the_legend_without_other_load(tmp_path):
    site = Site("bare", (Fuse("grid", (63.0,) * 3),), (ChargePoint("A1", "grid", max_current_a=16.0),))
    t0 = pd.Timestamp("2026-05-04 18:00", tz="Europe/Berlin")
    sessions = pd.DataFrame({"session_id": ["s1"], "charge_point_id": ["A1"], "arrival": [t0],
                             "departure": [t0 + pd.Timedelta(hours=5)], "energy_kwh": [20.0]})
    res = nb.simulate(nb.Scenario(site, sessions), "equal")
    fig = res.plot()
    labels = _labels(fig)
    assert "cars" in labels and not any("households" in x for x in labels)


def test_overloads_are_marked(small_scenario):
    ts = nb.simulate(small_scenario, "uncontrolled").timeseries
    root = small_scenario.site.root.id
    over = any((ts[f"{root}_{p}_a"] > ts[f"{root}_{p}_limit_a"] + 1e-6).any() for p in ("L1", "L2", "L3"))
    fig = plot_load(ts, grid_fuse=root)
    assert ("above the limit" in _labels(fig)) == bool(over)
    assert np.isfinite(fig.axes[0].get_ylim()).all()
