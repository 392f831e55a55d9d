"""Pictures of a simulation: the block's load per grid phase against the grid limit.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display needed), so it works
the same on a headless server and inside a notebook.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nowblock.block.site import PHASES


def plot_load(timeseries: pd.DataFrame, *, grid_fuse: str | None = None, title: str | None = None,
              path: str | Path | None = None, dpi: int = 110):
    """Plot the grid connection's current per phase [A], stacked by households and cars.

    ``timeseries`` is :attr:`nowblock.sim.simulator.SimulationResult.timeseries` (columns
    ``households_L1_a``, ``cars_L1_a``, ``<fuse>_L1_limit_a`` ...); ``grid_fuse`` names the
    grid connection (default: the first fuse with limit columns). Times are shown in the index's
    time zone. Writes a PNG to ``path`` if given; returns the matplotlib Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if grid_fuse is None:
        limit_cols = [c for c in timeseries.columns if c.endswith("_L1_limit_a")]
        grid_fuse = limit_cols[0][: -len("_L1_limit_a")] if limit_cols else None
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    t = timeseries.index
    for p, ax in enumerate(axes):
        ph = PHASES[p]
        house = timeseries.get(f"households_{ph}_a", pd.Series(0.0, index=t)).to_numpy(float)
        cars = timeseries.get(f"cars_{ph}_a", pd.Series(0.0, index=t)).to_numpy(float)
        ax.stackplot(t, house, cars, labels=["households", "cars"], colors=["#9db4c0", "#e07a5f"],
                     step="post", alpha=0.9)
        if grid_fuse is not None and f"{grid_fuse}_{ph}_limit_a" in timeseries:
            lim = timeseries[f"{grid_fuse}_{ph}_limit_a"].to_numpy(float)
            ax.step(t, lim, where="post", color="black", lw=1.2, ls="--", label=f"{grid_fuse} limit")
            worst = timeseries.get(f"{grid_fuse}_{ph}_a")
            if worst is not None:
                over = worst.to_numpy(float) > lim + 1e-6
                if over.any():
                    ax.scatter(t[over], worst.to_numpy(float)[over], s=6, color="crimson", zorder=3,
                               label="overload")
        ax.set_ylabel(f"{ph} [A]")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0)
    axes[0].legend(loc="upper left", ncols=4, fontsize="small")
    axes[-1].set_xlabel(f"time ({getattr(t, 'tz', None) or 'naive'})")
    fig.suptitle(title or "Block load per grid phase")
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def local_timeseries(timeseries: pd.DataFrame, tz: str) -> pd.DataFrame:
    """The same time series with its index in time zone ``tz`` (for plots in local time)."""
    out = timeseries.copy()
    out.index = pd.DatetimeIndex(out.index).tz_convert(tz)
    return out


__all__ = ["local_timeseries", "plot_load"]
