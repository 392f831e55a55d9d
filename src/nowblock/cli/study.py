"""Run a study: many blocks x policies on Ray, one Parquet table (``nowblock study STUDY.toml``).

Writes ``results.parquet`` (one row per cell: its parameters and every metric), one file a
finished cell under ``cells/`` (a re-run with the same ``--out`` skips finished cells) and the
plots (demand met and peak against the grid connection size, per policy; the policies side by
side where the cells share one size) into ``--out``.
``nowblock study default`` runs the embedded default study (3 connection sizes x 4 policies).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``study`` options to ``parser``."""
    parser.add_argument("study", help="a study file (TOML), or 'default' for the embedded study")
    parser.add_argument("--out", default=None, help="output folder (default: ./<study name>-out)")
    parser.add_argument("--address", default=None,
                        help="an existing Ray cluster (e.g. ray://head:10001 or auto); default: a local Ray "
                             "started in this process")
    parser.add_argument("--workers", type=int, default=None,
                        help="CPUs of the local Ray, one cell each (default: every core)")
    parser.add_argument("--no-ray", action="store_true", help="run the cells one by one in this process")
    parser.add_argument("--timeseries", action="store_true", help="also keep every cell's time series")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``nowblock study``; returns the exit code (1 if any cell failed)."""
    from nowblock.cli import UsageError
    from nowblock.studies import Study, plot_study, study

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    # A StudyError is a user error: nowblock.cli.main prints it as one line and exits with 2.
    spec = Study.default() if args.study == "default" else Study.from_toml(args.study)
    out = Path(args.out or f"{spec.name}-out")
    table = study(spec, out=out, address=args.address, workers=args.workers,
                  engine="process" if args.no_ray else "ray", timeseries=args.timeseries,
                  progress=not args.quiet)
    plots = [] if args.no_plot else plot_study(table, out / "plots", name=spec.name)
    ok = table[table["status"] == "ok"]
    failed = table[table["status"] != "ok"]
    print(f"study {spec.name}: {len(table)} cells ({table.attrs.get('skipped', 0)} already done), "
          f"{len(ok)} ok, {len(failed)} failed")
    if len(ok):
        cols = [c for c in ("policy", "grid_current_a", "demand_met", "peak_kw", "max_overload_a", "cost_eur",
                            "wall_seconds") if c in ok.columns]
        print(ok[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for _, r in failed.iterrows():
        print(f"failed cell {r['cell_id']} ({r['policy']}): {r['error']}", file=sys.stderr)
    print(f"wrote {out / 'results.parquet'}" + "".join(f", {p}" for p in plots))
    return 1 if len(failed) else 0
