"""Pictures of a simulation: the current on every fuse phase against its limit.

Made for a planner's report: one panel per phase of the grid connection (the block's other
load and the cars stacked, the fuse's limit dashed), then one panel per other fuse (its three
phase currents against its limit), every axis in amperes, the legend outside the data, and a
time axis that names the time zone and never leaves a date ambiguous.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display needed), so it works
the same on a headless server and inside a notebook.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nowblock.block.site import PHASES

_PHASE_COLORS = {"L1": "#0072B2", "L2": "#E69F00", "L3": "#009E73"}  # told apart with colour blindness too
_OTHER_LOAD, _CARS = "#9db4c0", "#e07a5f"


def _fuses_in(timeseries: pd.DataFrame) -> list[str]:
    """Fuse ids with limit columns, in column order (the grid connection first in a simulation)."""
    return [c[: -len("_L1_limit_a")] for c in timeseries.columns if c.endswith("_L1_limit_a")]


def _limit_step(ax, t, lim: np.ndarray, label: str, color: str = "black") -> None:
    ax.step(t, lim, where="post", color=color, lw=1.3, ls="--", label=label)


def _mark_overload(ax, t, current: np.ndarray, lim: np.ndarray, labelled: list[bool]) -> None:
    over = current > lim + 1e-6
    if over.any():
        ax.scatter(t[over], current[over], s=8, color="crimson", zorder=3,
                   label=None if labelled[0] else "above the limit")
        labelled[0] = True


def _time_axis(ax, tz) -> None:
    """Concise, unambiguous date ticks in the series' own time zone."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=tz, minticks=4, maxticks=10)
    fmt = mdates.ConciseDateFormatter(locator, tz=tz, show_offset=False)  # the x label gives the start
    # Day ticks carry the weekday: a planner reads "Tue 03 Mar", not "03".
    fmt.formats = ["%Y", "%b", "%a %d %b", "%H:%M", "%H:%M", "%S.%f"]
    fmt.zero_formats = ["", "%Y", "%a %d %b", "%a %d %b", "%H:%M", "%H:%M"]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(fmt)


def plot_load(timeseries: pd.DataFrame, *, grid_fuse: str | None = None, title: str | None = None,
              path: str | Path | None = None, dpi: int = 110, fuses: list[str] | None = None):
    """Plot the current on every fuse phase [A] against the fuse's limit.

    The first three panels are the grid connection's phases L1, L2, L3: the block's other load
    (households, net of generation) and the cars stacked, the limit dashed. Each further panel
    is one other fuse: its three phase currents and its limit. Overloads are marked in red.

    Parameters
    ----------
    timeseries : pandas.DataFrame
        :attr:`nowblock.sim.simulator.SimulationResult.timeseries` or the same columns
        (``households_L1_a``, ``cars_L1_a``, ``<fuse>_L1_a``, ``<fuse>_L1_limit_a`` ...) on a
        tz-aware index. Times are shown in the index's time zone (see :func:`local_timeseries`).
    grid_fuse : str, optional
        The grid connection's fuse id (default: the first fuse with limit columns).
    title : str, optional
        The figure's title (default "Current per fuse phase").
    path : str or os.PathLike, optional
        Write a PNG there.
    dpi : int
        Resolution of the PNG [dots per inch].
    fuses : list of str, optional
        The other fuses to draw (default: every fuse with limit columns).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (also written to ``path`` if given).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    known = _fuses_in(timeseries)
    if grid_fuse is None:
        grid_fuse = known[0] if known else None
    others = [f for f in (known if fuses is None else fuses) if f != grid_fuse and f"{f}_L1_a" in timeseries]
    n = 3 + len(others)
    fig = Figure(figsize=(12, 2.1 * n + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    t = pd.DatetimeIndex(timeseries.index)
    tz = t.tz
    zeros = pd.Series(0.0, index=timeseries.index)
    has_other = any(np.any(timeseries.get(f"households_{p}_a", zeros).to_numpy(float) != 0) for p in PHASES)
    overload_labelled = [False]
    for p, ax in enumerate(axes[:3]):
        ph = PHASES[p]
        cars = timeseries.get(f"cars_{ph}_a", zeros).to_numpy(float)
        if has_other:
            house = timeseries.get(f"households_{ph}_a", zeros).to_numpy(float)
            ax.stackplot(t, house, cars, labels=["other load (households)", "cars"], colors=[_OTHER_LOAD, _CARS],
                         step="post", alpha=0.9)
        else:
            ax.stackplot(t, cars, labels=["cars"], colors=[_CARS], step="post", alpha=0.9)
        if grid_fuse is not None and f"{grid_fuse}_{ph}_limit_a" in timeseries:
            lim = timeseries[f"{grid_fuse}_{ph}_limit_a"].to_numpy(float)
            _limit_step(ax, t, lim, "fuse limit")
            worst = timeseries.get(f"{grid_fuse}_{ph}_a")
            if worst is not None:
                _mark_overload(ax, t, worst.to_numpy(float), lim, overload_labelled)
        name = f"grid connection {grid_fuse!r}" if grid_fuse else "grid connection"
        ax.set_title(f"{name}, phase {ph}", loc="left", fontsize="medium")
    for fuse, ax in zip(others, axes[3:]):
        for ph in PHASES:
            cur = timeseries[f"{fuse}_{ph}_a"].to_numpy(float)
            ax.step(t, cur, where="post", color=_PHASE_COLORS[ph], lw=0.9, label=f"phase {ph}")
            lim_col = f"{fuse}_{ph}_limit_a"
            if lim_col in timeseries:
                _mark_overload(ax, t, cur, timeseries[lim_col].to_numpy(float), overload_labelled)
        lims = np.array([timeseries[f"{fuse}_{ph}_limit_a"].to_numpy(float) for ph in PHASES if
                         f"{fuse}_{ph}_limit_a" in timeseries])
        if len(lims):
            if np.allclose(lims, lims[0]):
                _limit_step(ax, t, lims[0], "fuse limit")
            else:
                for ph, lim in zip(PHASES, lims):
                    _limit_step(ax, t, lim, f"limit {ph}", color=_PHASE_COLORS[ph])
        ax.set_title(f"fuse {fuse!r}, phases L1-L3", loc="left", fontsize="medium")
    for ax in axes:
        ax.set_ylabel("current [A]")
        ax.set_ylim(bottom=0)
        top = ax.get_ylim()[1]
        ax.set_ylim(top=top * 1.05)  # the limit line never sits on the frame
        ax.grid(True, alpha=0.3)
        ax.margins(x=0)
    # One legend for the whole figure, right of the panels: it never hides a curve.
    seen: dict[str, object] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize="small", frameon=False)
    _time_axis(axes[-1], tz)
    start = f", from {t[0]:%a %d %b %Y %H:%M}" if len(t) else ""
    axes[-1].set_xlabel(f"local time ({tz}){start}" if tz is not None else f"time (no time zone){start}")
    fig.suptitle(title or "Current per fuse phase", fontsize="large")
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def local_timeseries(timeseries: pd.DataFrame, tz: str) -> pd.DataFrame:
    """The same time series with its index in time zone ``tz`` (for plots in local time).

    Parameters
    ----------
    timeseries : pandas.DataFrame
        A frame on a tz-aware DatetimeIndex.
    tz : str
        An IANA time zone, for example the site's ``"Europe/Berlin"``.

    Returns
    -------
    pandas.DataFrame
        A copy with the converted index.
    """
    out = timeseries.copy()
    out.index = pd.DatetimeIndex(out.index).tz_convert(tz)
    return out


__all__ = ["local_timeseries", "plot_load"]
