"""A self-contained HTML report of one or several simulations: ``report.html``.

The report shows, per policy, the block's power, every fuse's load per phase against its
rating (overloads marked) and each car's delivered energy against its request; with several
policies, bar charts of demand met, peak power and worst overload side by side; the metrics
table (one column a policy) and the scenario's parameters. Charts are drawn by uPlot (MIT,
vendored in ``nowblock/sim/web/``, the same chart code as the operator page of
``nowblock serve``); the library, the chart code and the data are inlined, so the file opens
from disk with no network.

Long runs are reduced to at most ``max_points`` points per chart: each point is a bucket of
consecutive steps holding the **maximum** load and power and the **minimum** limit of the
bucket, so a reduced chart never hides an overload or a peak (its title says so).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from nowblock.block.site import PHASES

#: Folder of the vendored charting library and the shared chart code (package data).
WEB_DIR = files("nowblock.sim") / "web"
#: The charting library: name, version, licence (docs/report.md, docs/operator-page.md).
CHART_LIBRARY = {"name": "uPlot", "version": "1.6.32", "license": "MIT", "file": "uPlot.iife.min.js"}

#: Metrics shown first in the table, in this order (the rest follow as the simulator lists them).
_FIRST = ("demand_met", "energy_requested_kwh", "energy_delivered_kwh", "unmet_kwh", "sessions_fully_met",
          "min_fraction_delivered", "peak_kw", "max_overload_a", "overload_steps", "max_unbalance_excess_a",
          "cost_eur", "solve_seconds_median", "solve_seconds_max", "fallback_steps")


#: A metric smaller than this in size is shown as 0: no metric of a block (A, kW, kWh, EUR, s)
#: means anything there, and sums of floats leave such residues.
_NOISE = 1e-9


def web_asset(name: str) -> str:
    """The text of a file of ``nowblock/sim/web/`` (uPlot, its CSS and licence, the chart code)."""
    return (WEB_DIR / name).read_text(encoding="utf-8")


def _bucket(values: np.ndarray, k: int, how: str) -> np.ndarray:
    """``values`` reduced by ``how`` ("max" or "min") over consecutive buckets of ``k`` (NaN-aware)."""
    if k <= 1:
        return values
    n = len(values)
    pad = (-n) % k
    v = np.concatenate([values.astype(float), np.full(pad, np.nan)]).reshape(-1, k)
    with np.errstate(all="ignore"):
        allnan = np.isnan(v).all(axis=1)
        out = np.nanmax(np.where(np.isnan(v), -np.inf, v), axis=1) if how == "max" else \
            np.nanmin(np.where(np.isnan(v), np.inf, v), axis=1)
    out[allnan] = np.nan
    return out


def _list(values: np.ndarray, digits: int = 2) -> list:
    """A JSON list with NaN as null, rounded to ``digits``."""
    v = np.round(np.asarray(values, dtype=float), digits)
    return [None if not math.isfinite(x) else x for x in v.tolist()]


def _result_data(result, max_points: int) -> dict:
    """One simulation as the chart data of the report (see the module docstring)."""
    ts = result.timeseries
    n = len(ts)
    k = max(1, math.ceil(n / max_points)) if max_points else 1
    times = pd.DatetimeIndex(ts.index)
    secs = times.as_unit("s").asi8 if n else np.array([], dtype=np.int64)  # Unix seconds (UTC)
    secs = secs[::k]
    step_s = result.step.total_seconds() if result.step is not None else None
    note = "" if k == 1 else f" (max of every {k} steps)"

    def col(name: str, how: str = "max") -> list:
        if name not in ts:
            return [None] * len(secs)
        return _list(_bucket(ts[name].to_numpy(float), k, how))

    site = result.site
    fuse_ids = list(site.fuse_ids) if site is not None else sorted(
        {c[: -len("_L1_limit_a")] for c in ts.columns if c.endswith("_L1_limit_a")})
    root = site.root.id if site is not None else (fuse_ids[0] if fuse_ids else None)
    fuses = []
    for fid in fuse_ids:
        loads = [_bucket(ts[f"{fid}_{p}_a"].to_numpy(float), k, "max") if f"{fid}_{p}_a" in ts
                 else np.full(len(secs), np.nan) for p in PHASES]
        lims = [_bucket(ts[f"{fid}_{p}_limit_a"].to_numpy(float), k, "min") if f"{fid}_{p}_limit_a" in ts
                else np.full(len(secs), np.nan) for p in PHASES]
        # One limit line when the three phases share it (the usual fuse), else one a phase.
        same = all(np.array_equal(lims[0], x, equal_nan=True) for x in lims[1:])
        limits = [{"label": "rating", "values": _list(lims[0])}] if same else [
            {"label": f"{p} rating", "values": _list(x)} for p, x in zip(PHASES, lims)]
        over = np.full(len(secs), np.nan)
        with np.errstate(invalid="ignore"):
            for load, lim in zip(loads, lims):
                hit = load > lim + 1e-6
                over[hit] = np.fmax(over[hit], load[hit])
        fuses.append({"id": fid, "root": fid == root, "load_a": [_list(x) for x in loads], "limits": limits,
                      "overload_a": _list(over), "max_a": float(np.nanmax(np.stack(loads))) if n else 0.0})
    s = result.sessions
    return {
        "policy": str(result.policy),
        "step_s": step_s,
        "bucket_steps": k,
        "bucket_note": note,
        "times": [int(x) for x in secs],
        "power": {c: col(c) for c in ("base_load_kw", "charging_kw", "block_kw")},
        "fuses": fuses,
        "sessions": {"requested": _list(s["energy_requested_kwh"].to_numpy(float), 3) if len(s) else [],
                     "delivered": _list(s["energy_delivered_kwh"].to_numpy(float), 3) if len(s) else []},
        "metrics": {k2: (_plain(v)) for k2, v in result.metrics.items()},
    }


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def _fmt(v) -> str:
    """A metric value for the table."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return html.escape(str(v))
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) < _NOISE:  # float noise of sums (3.553e-15 A of unbalance excess), not a value
        return "0"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e7):
        return f"{v:.4g}"
    return f"{v:,.4f}".rstrip("0").rstrip(".")


def _metrics_table(results: Sequence) -> str:
    keys = [k for k in _FIRST if any(k in r.metrics for r in results)]
    keys += [k for r in results for k in r.metrics if k not in keys and k != "policy"]
    keys = list(dict.fromkeys(keys))
    head = "".join(f"<th>{html.escape(str(r.policy))}</th>" for r in results)
    rows = "".join(f"<tr><th scope='row'>{html.escape(k)}</th>"
                   + "".join(f"<td>{_fmt(_plain(r.metrics.get(k)))}</td>" for r in results) + "</tr>"
                   for k in keys)
    return f"<table class='metrics' id='metrics'><thead><tr><th>metric</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def scenario_parameters(scenario=None, site=None, results: Sequence = (), parameters: Mapping | None = None) -> dict:
    """The parameters the report lists: the site (fuses, ratings, charging points), the sessions,
    the simulated window and step, the caller's ``parameters`` (e.g. the command line's options)
    and the scenario's own ``meta`` (how a generated scenario was made)."""
    site = site if site is not None else (scenario.site if scenario is not None else None)
    out: dict = {}
    if scenario is not None:
        out["scenario"] = scenario.name
    if site is not None:
        out["site"] = site.name
        out["time zone"] = site.timezone
        out["voltage [V]"] = site.voltage_v
        out["charging points"] = len(site.charge_points)
        phases = pd.Series([c.phases for c in site.charge_points]).value_counts().sort_index()
        out["charging points by phases"] = ", ".join(f"{n} x {p}-phase" for p, n in phases.items())
        out["charging point max current [A]"] = ", ".join(
            f"{n} x {a:g}" for a, n in pd.Series([c.max_current_a for c in site.charge_points]).value_counts()
            .sort_index().items())
        for f in site.fuses:
            rating = "/".join(f"{x:g}" for x in f.max_current_a)
            where = "grid connection" if f.parent is None else f"under {f.parent}"
            n_cp = int(site.ancestry[site.fuse_ids.index(f.id)].sum())
            out[f"fuse {f.id} [A per phase]"] = f"{rating} ({where}, {n_cp} charging points)"
        if site.max_unbalance_a is not None:
            out["max unbalance [A]"] = site.max_unbalance_a
    if scenario is not None:
        s = scenario.sessions
        out["sessions in the scenario"] = len(s)
        if len(s):
            tz = site.timezone if site is not None else "UTC"
            out["first arrival"] = pd.Timestamp(s["arrival"].min()).tz_convert(tz).isoformat()
            out["last departure"] = pd.Timestamp(s["departure"].max()).tz_convert(tz).isoformat()
        out["prices"] = "yes" if getattr(scenario, "prices", None) is not None and len(scenario.prices) else "no"
    if results:
        r0 = results[0]
        if len(r0.timeseries):
            tz = site.timezone if site is not None else "UTC"
            out["simulated from"] = r0.timeseries.index[0].tz_convert(tz).isoformat()
            out["simulated until"] = (r0.timeseries.index[-1] + r0.step).tz_convert(tz).isoformat()
        out["control step"] = str(r0.step)
        out["policies"] = ", ".join(str(r.policy) for r in results)
    for k, v in (parameters or {}).items():
        out[str(k)] = v
    if scenario is not None:
        for k, v in (getattr(scenario, "meta", None) or {}).items():
            out[f"scenario {k}"] = v
    return out


def report_html(results, *, scenario=None, parameters: Mapping | None = None, title: str | None = None,
                max_points: int = 4000) -> str:
    """The report of one or several simulations of one scenario as one HTML document.

    Parameters
    ----------
    results : SimulationResult or sequence of SimulationResult
        Runs to show (one per policy; they should share the scenario and window).
    scenario : nowblock.Scenario, optional
        For the parameters table (site, sessions, meta); the site is taken from the results
        otherwise.
    parameters : mapping, optional
        More parameters to list (e.g. step, horizon, needs of the command line).
    title : str, optional
        The page title (default: scenario and policies).
    max_points : int
        At most this many points per chart (buckets keep the maximum load, see module docstring).

    Returns
    -------
    str
        The self-contained HTML (no external resource).
    """
    from nowblock.sim.simulator import SimulationResult

    if isinstance(results, SimulationResult):
        results = [results]
    results = list(results)
    if not results:
        raise ValueError("report_html: no simulation result to report")
    site = results[0].site if results[0].site is not None else (scenario.site if scenario is not None else None)
    name = scenario.name if scenario is not None else (site.name if site is not None else "simulation")
    title = title or f"nowblock simulation: {name}, policy {', '.join(str(r.policy) for r in results)}"
    data = {"title": title, "timezone": site.timezone if site is not None else None,
            "results": [_result_data(r, max_points) for r in results]}
    params = scenario_parameters(scenario, site, results, parameters)
    esc = html.escape
    param_rows = "".join(f"<tr><th scope='row'>{esc(str(k))}</th><td>{_fmt(_plain(v))}</td></tr>"
                         for k, v in params.items())
    parts = [f"<header><h1>{esc(title)}</h1><p class='sub'>written "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by nowblock; times in "
             f"{esc(data['timezone'] or 'UTC')}. Charts: drag to zoom, double-click to reset.</p></header>"]
    if len(results) > 1:
        parts.append("<section id='comparison'><h2>Policies compared</h2><div class='grid3'>"
                     "<div class='chart' id='cmp-demand'></div><div class='chart' id='cmp-peak'></div>"
                     "<div class='chart' id='cmp-overload'></div></div></section>")
    parts.append(f"<section><h2>Metrics</h2><div class='scroll'>{_metrics_table(results)}</div></section>")
    for k, r in enumerate(data["results"]):
        fuse_divs = "".join(f"<div class='chart' id='fuse-{k}-{j}'></div>" for j in range(len(r["fuses"])))
        parts.append(f"<section class='run' id='run-{k}'><h2>Policy {esc(r['policy'])}</h2>"
                     f"<div class='chart' id='power-{k}'></div>{fuse_divs}"
                     f"<div class='chart' id='energy-{k}'></div></section>")
    parts.append(f"<section><h2>Scenario and parameters</h2><div class='scroll'><table class='params' "
                 f"id='parameters'><tbody>{param_rows}</tbody></table></div></section>")
    lib = CHART_LIBRARY
    parts.append(f"<footer>Charts drawn with {lib['name']} {lib['version']} ({lib['license']} licence, "
                 f"inlined below with its notice).</footer>")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    license_text = web_asset("uPlot.LICENSE").replace("*/", "* /")
    return "".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><link rel='icon' href='data:,'>",
        f"<style>{web_asset('uPlot.min.css')}\n{web_asset('nowblock.css')}</style></head>",
        "<body class='report'>", *parts,
        f"<script>/*! {lib['name']} {lib['version']}, {lib['license']} licence:\n{license_text}*/\n",
        web_asset(lib["file"]), "</script>",
        f"<script>{web_asset('charts.js')}</script>",
        f"<script type='application/json' id='nowblock-data'>{payload}</script>",
        f"<script>{web_asset('report.js')}</script></body></html>",
    ])


def write_report(results, path, *, scenario=None, parameters: Mapping | None = None, title: str | None = None,
                 max_points: int = 4000) -> Path:
    """Write :func:`report_html` to ``path`` (a file, or a folder to write ``report.html`` into).

    Returns the file's path.
    """
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / "report.html"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(report_html(results, scenario=scenario, parameters=parameters, title=title,
                             max_points=max_points), encoding="utf-8")
    return p


__all__ = ["CHART_LIBRARY", "WEB_DIR", "report_html", "scenario_parameters", "web_asset", "write_report"]
