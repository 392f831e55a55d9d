"""Simulate a policy on a scenario; write its time series, sessions, metrics and plot.

Prints every metric, shows progress on stderr for long runs, and writes ``timeseries.csv``,
``sessions.csv``, ``metrics.json`` and ``load.png`` (the grid connection's load per phase
against its limit, stacked by households and cars) into ``--out``, and ``report.html`` (all
charts, metrics and parameters in one self-contained file, docs/report.md). With several
policies (``--policy edf,milp``) each run's files go to ``--out/<policy>/`` and the report
compares them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import pandas as pd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    from nowblock.policies import POLICY_NAMES
    from nowblock.sim.simulator import DEFAULT_POLICY

    parser.add_argument("--scenario", default="default",
                        help="'default' (the embedded NOW-Block) or a scenario folder (site.toml, sessions.csv, ...)")
    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help=f"one of {', '.join(POLICY_NAMES)} (default: {DEFAULT_POLICY}, the policy serve runs), or several separated by commas "
                             "(e.g. edf,milp): each runs on the same scenario, its files go to --out/<policy>/ and "
                             "report.html compares them")
    parser.add_argument("--out", default="nowblock-out", help="output folder (default: ./nowblock-out)")
    parser.add_argument("--step", default="5min", help="control step, a pandas offset like 5min (default: 5min)")
    parser.add_argument("--days", type=float, default=None,
                        help="simulate only the first N calendar days in the site's time zone, N > 0 (a week from "
                             "Monday 00:00 ends the next Monday 00:00 local, across a daylight saving switch too; the "
                             "site, its grid connection included, stays the same); without it, every session")
    parser.add_argument("--horizon", default="24h", help="look-ahead of base load and prices (default: 24h)")
    parser.add_argument("--needs", choices=("known", "unknown"), default="known",
                        help="whether the policy sees real departures and energies (default: known)")
    parser.add_argument("--milp-effort", type=float, default=None, metavar="X",
                        help="the milp policy's milp_effort, X >= 0: its MILP stage may take X times what the step's "
                             "plan took before it (default: 1); 0 never runs the stage, so two runs on the same scenario "
                             "give the same results (the stage stops on a time budget); milp policy only")
    parser.add_argument("--no-plot", action="store_true", help="skip load.png")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def load_scenario(spec: str, days: float | None = None):
    """The scenario named by ``spec``: "default" or a folder.

    For the default scenario only ``days`` days (rounded up) are generated; its site is the
    same whatever ``days`` is (see :func:`nowblock.block.synth.generate_parts`).

    Raises
    ------
    nowblock.cli.UsageError
        ``spec`` is neither "default" nor a folder, or the folder's sessions.csv holds no
        session (nothing to simulate).
    """
    from nowblock.block.scenario import Scenario
    from nowblock.cli import UsageError

    if spec == "default":
        return Scenario.default(days=max(1, math.ceil(days))) if days else Scenario.default()
    path = Path(spec)
    if not path.is_dir():
        raise UsageError(f"--scenario {spec!r} is neither 'default' nor a folder")
    scenario = Scenario.from_dir(path)
    if not len(scenario.sessions):
        # The simulated window runs from the first arrival to the last departure: no sessions,
        # no window (the Python API takes start and end for that; the command line does not).
        raise UsageError(f"{path / 'sessions.csv'}: no sessions (only a header): nothing to simulate")
    return scenario


def check_days(days: float | None) -> None:
    """Refuse a ``--days`` that is not a positive, finite number of days.

    0 or a negative number simulated nothing and reported perfect results (or, for 0, silently
    everything); ``inf`` or ``nan`` have no end.
    """
    from nowblock.cli import UsageError

    if days is not None and not (math.isfinite(days) and days > 0):
        raise UsageError(f"--days {days:g} is not a positive number of days (leave it out to simulate every "
                         f"session)")


def check_duration(option: str, value: str) -> pd.Timedelta:
    """``--step`` or ``--horizon`` as a positive Timedelta with its unit.

    Parameters
    ----------
    option : {"step", "horizon"}
        The option's name without the dashes.
    value : str
        The text given, such as ``"5min"``.

    Returns
    -------
    pandas.Timedelta

    Raises
    ------
    nowblock.cli.UsageError
        Naming the option: not a duration, not > 0, or a number without a unit (``--step 5`` was
        read as 5 ns: a MemoryError for 141 TiB of step grid, exit 1), checked as
        :func:`nowblock.optimize` and :func:`nowblock.simulate` check it.
    """
    from nowblock.cli import UsageError
    from nowblock.milp.inputs import check_duration as duration

    try:
        delta = pd.Timedelta(value)
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"--{option} {value!r} is not a duration like 5min ({exc})") from None
    if pd.isna(delta) or delta <= pd.Timedelta(0):
        raise UsageError(f"--{option} {value!r} is not a positive duration like 5min")
    try:
        return duration(value, f"--{option}")
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def check_milp_effort(effort: float | None, policies: list[str]) -> dict | None:
    """``--milp-effort`` as the milp policy's options; None without it.

    Parameters
    ----------
    effort : float or None
        The value given (a multiple of the time spent before the MILP stage), or None.
    policies : list of str
        The policies of ``--policy``.

    Returns
    -------
    dict or None
        ``{"milp_effort": effort}``, for the milp policy only.

    Raises
    ------
    nowblock.cli.UsageError
        Not a finite number >= 0, or no milp policy to take it.
    """
    from nowblock.cli import UsageError

    if effort is None:
        return None
    if not (math.isfinite(effort) and effort >= 0):
        raise UsageError(f"--milp-effort {effort:g} is not a number >= 0 (0: no MILP stage, repeatable runs)")
    if "milp" not in [p.lower() for p in policies]:
        raise UsageError(f"--milp-effort is an option of the milp policy; --policy {','.join(policies)} has none")
    return {"milp_effort": effort}


def format_metrics(metrics: dict) -> str:
    """The metrics as an aligned two-column table."""
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for k, v in metrics.items():
        if isinstance(v, float):
            text = f"{v:.6g}" if (abs(v) < 1e-3 and v != 0) or abs(v) >= 1e6 else f"{v:,.4f}".rstrip("0").rstrip(".")
        else:
            text = str(v)
        lines.append(f"{k:<{width}}  {text}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``nowblock simulate``; returns the exit code."""
    from nowblock.sim.simulator import simulate

    # Every option is checked before the scenario is read: a typo costs no time and gives one line.
    for opt in ("step", "horizon"):
        check_duration(opt, getattr(args, opt))
    check_days(args.days)
    policies = policy_list(args.policy)
    milp_options = check_milp_effort(args.milp_effort, policies)
    scenario = load_scenario(args.scenario, args.days)
    out = Path(args.out)
    results, written = [], []
    for name in policies:
        result = simulate(
            scenario,
            name,
            step=args.step,
            horizon=args.horizon,
            days=args.days,  # calendar days in the site's zone from the first arrival's step
            needs=args.needs,
            progress=not args.quiet,
            policy_options=milp_options if name.lower() == "milp" else None,  # the baselines take none
        )
        folder = out if len(policies) == 1 else out / name
        files = result.to_dir(folder, plot=not args.no_plot,
                              title=f"{scenario.name}: policy {result.policy}")
        written += [str(f.relative_to(out)) for f in files]
        results.append(result)
    written.append(_write_report(results, scenario, out, args).name)
    try:
        for result in results:
            n_cp, n_s = len(scenario.site.charge_points), result.metrics["n_sessions"]
            print(f"scenario {scenario.name} ({n_cp} charging point{'s' * (n_cp != 1)}, "
                  f"{n_s} session{'s' * (n_s != 1)}), policy {result.policy}, step {args.step}")
            print(format_metrics(result.metrics))
        print(f"wrote {', '.join(written)} to {out}")
        sys.stdout.flush()
    except BrokenPipeError:  # `nowblock simulate | head`: the reader left, the files are written
        sys.stdout = open(os.devnull, "w")
    return 0


# ---- several policies and the HTML report (issue 18) ------------------------------------------------
def policy_list(spec: str) -> list[str]:
    """The policy names of ``--policy`` ("edf" or "edf,milp"), in order, each once.

    Raises
    ------
    nowblock.cli.UsageError
        No name, a name twice (case-insensitive, as the policies are named), or a name that is
        not one of :data:`nowblock.policies.POLICY_NAMES`.
    """
    from nowblock.cli import UsageError
    from nowblock.policies import POLICY_NAMES

    names = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not names:
        raise UsageError("--policy names no policy")
    unknown = [n for n in names if n.lower() not in POLICY_NAMES]
    if unknown:
        raise UsageError(f"--policy: unknown policy {unknown[0]!r}; choose one of {', '.join(POLICY_NAMES)}")
    keys = [n.lower() for n in names]
    dup = sorted({n for n in keys if keys.count(n) > 1})
    if dup:
        raise UsageError(f"--policy names {', '.join(dup)} twice")
    return names


def _write_report(results, scenario, out: Path, args: argparse.Namespace) -> Path:
    """``report.html`` in ``out``: the runs' charts, metrics and the scenario's parameters."""
    from nowblock.sim.report import write_report

    params = {"command-line scenario": args.scenario, "step": args.step, "horizon": args.horizon,
              "needs": args.needs, "days": args.days if args.days else "all"}
    if args.milp_effort is not None:
        params["milp_effort"] = args.milp_effort
    return write_report(results, out / "report.html", scenario=scenario, parameters=params)
