"""Wiring the live loop into ``nowblock serve``: options, the store, the restored state."""

from __future__ import annotations

import argparse
import logging


from nowblock.control.controller import Controller
from nowblock.store import attach_store, restore_state

log = logging.getLogger(__name__)

DEFAULT_DB = "nowblock.sqlite"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The control loop's options of ``nowblock serve`` (``nowblock.cli.serve`` adds them)."""
    g = parser.add_argument_group("control loop")
    g.add_argument("--policy", default="milp", help="milp (default), edf, llf, equal")
    g.add_argument("--period", type=float, default=60.0, help="seconds between planned control steps (60)")
    g.add_argument("--base-load", default=None,
                   help="CSV time,kw of the block's measured other load (history for the forecaster)")
    g.add_argument("--worst-base-load-kw", type=float, default=None,
                   help="other load [kW] the fail-safe profiles must survive (default: the history's maximum)")
    g.add_argument("--db-sync", choices=("normal", "full"), default="normal",
                   help="SQLite durability: normal (default; every acknowledged value survives a crash of "
                        "serve, a power cut may lose the last ones) or full (also a power cut; one disk "
                        "flush per message, which limits a block to a few hundred messages a second)")


def _serve_options(args, site) -> dict:
    """Controller keyword arguments from ``nowblock serve``'s parsed options (``site``: the block,
    for the base-load file's checks)."""
    opts: dict = {}
    if args is None:
        return opts
    for name, key in (("policy", "policy"), ("period", "period_s"), ("worst_base_load_kw", "worst_base_load_kw")):
        if getattr(args, name, None) is not None:
            opts[key] = getattr(args, name)
    if getattr(args, "tx_validity", None):
        opts["profile_validity_s"] = float(args.tx_validity)
    if getattr(args, "base_load", None):
        from nowblock.block.scenario import read_base_load_csv
        from nowblock.forecast.base_load import BaseLoadForecaster
        from nowblock.forecast.calendar import Calendar

        # Read as a scenario's base_load.csv (its own reading took times without an offset as
        # UTC: an 18:00 local peak planned at 19:00, found by a review).
        opts.update(base_load_history=read_base_load_csv(args.base_load, site),
                    forecaster=BaseLoadForecaster(calendar=Calendar.for_site(site)))
    else:
        log.warning("no --base-load history: planning without the block's other load")
    return opts


def attach(central, db: str | None = None, *, args: argparse.Namespace | None = None, **kwargs) -> Controller:
    """Wire persistence and the controller into a central system (``nowblock serve`` calls this).

    Opens the store ``db`` (default ``nowblock.sqlite``; a SQLite file in WAL mode with
    ``synchronous=NORMAL`` unless ``db_sync="full"``), restores the running transactions and the
    plan, makes every later event durable before its OCPP answer, and returns the
    :class:`Controller` (``await controller.start()`` to run it). ``args`` are ``nowblock serve``'s
    options (see :func:`add_serve_arguments`); ``kwargs`` go to :class:`Controller` (and
    ``db_sync``) and win over them.
    """
    from nowblock.store import open_store

    kwargs = {**_serve_options(args, central.site), **kwargs}
    url = str(db or DEFAULT_DB)
    sync = kwargs.pop("db_sync", None) or getattr(args, "db_sync", None)
    if "://" not in url or url.startswith("sqlite:"):
        # WAL with synchronous=NORMAL: an acknowledged value survives a crash of serve (the
        # write is in the WAL before the answer goes out); FULL adds a disk flush per message.
        store = open_store(url, synchronous=(sync or "normal").upper())
    else:
        store = open_store(url)
    restore_state(central.state, store)
    recorder = attach_store(central.state, store)
    ctl = Controller(central, central.site, kwargs.pop("policy", "milp"), store, **kwargs)
    ctl.owns_store = True
    # A connection record that failed is written again even where nothing else is written.
    ctl.step_listeners.append(lambda res: recorder.retry(res.time))
    if "needs_forecaster" not in kwargs:
        ctl.needs_from_store = True  # learnt from this block's own finished sessions, refitted daily
    return ctl
