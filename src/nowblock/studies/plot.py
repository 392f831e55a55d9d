"""Pictures of a study: demand met and peak power against the grid connection size, per policy.

One PNG per combination of the study's other varying parameters (for example one per
``scenario.n_charge_points``), each with two panels sharing the x axis: ``demand_met`` [%]
and ``peak_kw`` [kW] against ``grid_current_a`` [A per phase], one line per policy. Failed
cells are left out (and counted in the title). matplotlib's object API on the Agg canvas.

A PNG whose cells share one connection size (a study over scenario folders, one size each, or
a single ``grid_current_a``) has no axis to draw lines along: it shows the policies side by
side instead, a marker and its value each, the connection size in the axis label and the
connection's rating as a line across the peak panel. (Drawn against the size, the policies'
points fell on one x, equal values hid each other, and the rating was a one-point line that
only its legend showed.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

#: Parameter columns that do not tell cells apart in a plot (they follow from others).
_NOT_GROUPING = {"policy", "policy_options", "scenario.grid_current_a"}


def _group_columns(table: pd.DataFrame) -> list[str]:
    params = [c for c in table.columns if c.startswith(("scenario.", "simulate.")) or c == "policy_options"]
    return [c for c in params if c not in _NOT_GROUPING and table[c].astype(str).nunique() > 1]


def _one_size(ax_met, ax_peak, part: pd.DataFrame, size_a: float) -> None:
    """The policies side by side for cells that share one connection size ``size_a`` [A]."""
    policies = list(dict.fromkeys(part["policy"]))
    for i, policy in enumerate(policies):
        rows = part[part["policy"] == policy]
        for ax, values, unit in ((ax_met, 100.0 * rows["demand_met"].to_numpy(float), "%"),
                                 (ax_peak, rows["peak_kw"].to_numpy(float), "kW")):
            ax.plot([i] * len(values), values, ls="none", marker="o", color=f"C{i}")
            for v in values:
                ax.annotate(f"{v:.1f} {unit}", (i, v), xytext=(8, 0), textcoords="offset points", va="center")
    if "voltage_v" in part:
        rating_kw = 3e-3 * float(part["voltage_v"].iloc[0]) * size_a
        label = f"connection rating ({rating_kw:.1f} kW)"
        ax_peak.axhline(rating_kw, ls="--", color="0.5", label=label)
        # Written on the line: a legend box could hide a policy's marker.
        ax_peak.text(0.01, rating_kw, label, transform=ax_peak.get_yaxis_transform(), color="0.4",
                     va="bottom", ha="left")
        ax_peak.margins(y=0.12)  # room for the words above the line
    ax_peak.set_xticks(range(len(policies)), policies)
    ax_peak.set_xlim(-0.5, len(policies) - 0.5)
    ax_peak.set_xlabel(f"policy (one grid connection: {size_a:g} A per phase)")


def plot_study(table: pd.DataFrame, out: str | Path, *, name: str = "study", dpi: int = 110) -> list[Path]:
    """Write the study's PNGs into folder ``out``; returns their paths.

    Parameters
    ----------
    table : DataFrame
        The table :func:`nowblock.studies.study` returned (or ``results.parquet``).
    out : path
        Folder for the PNGs (created if needed).
    name : str
        The study's name, for titles and file names.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ok = table[table["status"] == "ok"] if "status" in table else table
    n_failed = len(table) - len(ok)
    if ok.empty:
        return []
    groups = _group_columns(ok)
    keyed = ok.assign(_key=ok[groups].astype(str).agg(", ".join, axis=1) if groups else "")
    paths = []
    for k, (key, part) in enumerate(keyed.groupby("_key", sort=False)):
        fig = Figure(figsize=(8, 7), layout="constrained")
        FigureCanvasAgg(fig)
        ax_met, ax_peak = fig.subplots(2, 1, sharex=True)
        sizes = part["grid_current_a"].dropna().unique()
        if len(sizes) == 1:
            _one_size(ax_met, ax_peak, part, float(sizes[0]))
            _finish(fig, ax_met, ax_peak, name, groups, part, n_failed)
            paths.append(_save(fig, out, name, groups, k, dpi))
            continue
        for policy, rows in part.groupby("policy", sort=False):
            rows = rows.sort_values("grid_current_a")
            x = rows["grid_current_a"].to_numpy(float)
            ax_met.plot(x, 100.0 * rows["demand_met"].to_numpy(float), marker="o", label=policy)
            ax_peak.plot(x, rows["peak_kw"].to_numpy(float), marker="o", label="_nolegend_")
        if "voltage_v" in part:  # what the connection carries on three phases at its rating
            conn = part.drop_duplicates("grid_current_a").sort_values("grid_current_a")
            ax_peak.plot(conn["grid_current_a"], 3e-3 * conn["voltage_v"] * conn["grid_current_a"], ls="--",
                         color="0.5", label="connection rating")
            ax_peak.legend(loc="center right")
        ax_peak.set_xlabel("grid connection [A per phase]")
        ax_met.legend(title="policy", loc="lower right")
        _finish(fig, ax_met, ax_peak, name, groups, part, n_failed)
        paths.append(_save(fig, out, name, groups, k, dpi))
    return paths


def _finish(fig, ax_met, ax_peak, name: str, groups: list[str], part: pd.DataFrame, n_failed: int) -> None:
    """Axis labels, grids and the title (the group's parameters, the failed cells left out)."""
    ax_met.set_ylabel("demand met [%]")
    ax_peak.set_ylabel("peak block power [kW]")
    for ax in (ax_met, ax_peak):
        ax.grid(alpha=0.3)
    what = ", ".join(f"{g}={v}" for g, v in zip(groups, part.iloc[0][groups])) if groups else ""
    failed = f" ({n_failed} failed cells left out)" if n_failed else ""
    fig.suptitle(f"{name}{': ' + what if what else ''}{failed}")


def _save(fig, out: Path, name: str, groups: list[str], k: int, dpi: int) -> Path:
    """Write the ``k``-th figure as a PNG named after the study; returns its path."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "study"
    path = out / (f"{slug}.png" if not groups else f"{slug}-{k + 1:02d}.png")
    fig.savefig(path, dpi=dpi)
    return path
