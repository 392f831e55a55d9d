"""Show the live loop: central system, controller and simulated chargers, on an accelerated clock.

One command that starts :class:`~nowblock.ocpp.server.CentralSystem` on localhost with the
default site, wires in :func:`nowblock.control.attach`, connects simulated chargers of both
protocol versions (some with quirks), runs a simulated day on an accelerated clock, prints
the block's load per phase against its limit as it goes, and ends with the metrics and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time as _time

import numpy as np
import pandas as pd

from nowblock.loop import closed_loop as cl
from nowblock.control import Controller, attach
from nowblock.seam import root_index
from nowblock.block.site import Site

log = logging.getLogger(__name__)


class AcceleratedClock:
    """Simulated UTC time that runs ``speed`` times faster than the wall clock from ``start``."""

    def __init__(self, start: pd.Timestamp, speed: float, *, running: bool = True) -> None:
        self.start = pd.Timestamp(start)
        self.speed = float(speed)
        self._t0 = _time.monotonic() if running else None

    def now(self) -> pd.Timestamp:
        """Simulated now (UTC); ``start`` until :meth:`run` when created stopped."""
        if self._t0 is None:
            return self.start
        return (self.start + pd.Timedelta(seconds=(_time.monotonic() - self._t0) * self.speed)).floor("us")

    __call__ = now

    def run(self) -> None:
        """Let simulated time run on from ``start`` (set-up before this takes no simulated time)."""
        if self._t0 is None:
            self._t0 = _time.monotonic()

    def wall_s(self, sim_s: float) -> float:
        """Wall seconds that ``sim_s`` simulated seconds take."""
        return float(sim_s) / self.speed

    async def sleep_until(self, t: pd.Timestamp) -> None:
        """Sleep until simulated time ``t``."""
        left = (pd.Timestamp(t) - self.now()).total_seconds()
        if left > 0:
            await asyncio.sleep(left / self.speed)


def demo_start(week_start: pd.Timestamp, timezone: str, day: int, start_hour: float) -> pd.Timestamp:
    """When the demo starts: ``start_hour`` on the wall clock of calendar day ``day`` of the week.

    Parameters
    ----------
    week_start : pandas.Timestamp
        Start of the scenario's week (tz-aware).
    timezone : str
        The site's IANA time zone; days and hours are counted on its wall clock.
    day : int
        Calendar day after the week's first day (0 is the first day).
    start_hour : float
        Wall-clock hour of that day, h (fractions allowed).

    Returns
    -------
    pandas.Timestamp
        The start in UTC. A wall time that a DST change skips moves forward to the first hour that exists.
    """
    # Counting in local wall time, not in 24 h steps: across a DST change N x 24 h lands an hour off.
    wall = (week_start.tz_convert(timezone).tz_localize(None).normalize()
            + pd.Timedelta(days=int(day), hours=float(start_hour)))
    return wall.tz_localize(timezone, nonexistent="shift_forward", ambiguous=False).tz_convert("UTC")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nowblock demo``."""
    parser.add_argument("--speed", type=float, default=480.0,
                        help="simulated seconds per wall second (default 480: a day in 3 minutes)")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours to run (default 24)")
    parser.add_argument("--policy", default="milp", help="milp (default), edf, llf, equal")
    parser.add_argument("--charge-points", type=int, default=24, help="wallboxes in the default block (24)")
    parser.add_argument("--grid-a", type=float, default=None,
                        help="grid connection [A per phase] (default: the scenario's; smaller is congested)")
    parser.add_argument("--day", type=int, default=1, help="which day of the default week to run (0..6, default 1)")
    parser.add_argument("--start-hour", type=float, default=12.0,
                        help="local hour the run starts at (default 12: the evening peak and the night inside)")
    parser.add_argument("--out", default="nowblock-demo", help="folder for the PNG, metrics and the SQLite store")
    parser.add_argument("--port", type=int, default=0, help="port of the central system (default: a free one)")


def run(args: argparse.Namespace) -> int:
    """Run ``nowblock demo``; returns the exit code."""
    try:
        return asyncio.run(_demo(args))
    except KeyboardInterrupt:
        return 130


async def _demo(args) -> int:
    import json
    from pathlib import Path

    from nowblock.block.scenario import Scenario
    from nowblock.ocpp.server import CentralSystem
    from nowblock.sim.chargers import Car, Quirks, SimCharger, wait_all_connected

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scn = Scenario.default(n_charge_points=args.charge_points,
                           **({"grid_current_a": args.grid_a} if getattr(args, "grid_a", None) else {}))
    site = scn.site
    t0 = demo_start(scn.start, site.timezone, args.day, args.start_hour)
    t_end = t0 + pd.Timedelta(hours=args.hours)
    # Central system, chargers and controller all run on one clock, standing still during set-up.
    clock = AcceleratedClock(t0, args.speed, running=False)
    day = scn.sessions[(scn.sessions["arrival"] < t_end) & (scn.sessions["departure"] > t0)]
    meter_sim_s, slot_s = 300.0, 900.0
    db = out / "demo.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    print(f"nowblock demo: {site.name}, {len(site.charge_points)} charging points, grid "
          f"{site.root.max_current_a[0]:.0f} A per phase; {len(day)} sessions from {t0.tz_convert(site.timezone):%a %d %b %H:%M}"
          f" for {args.hours:g} h at {args.speed:g}x ({args.hours * 3600 / args.speed:.0f} s)", flush=True)
    needs = _fit_needs(scn.sessions[scn.sessions["departure"] <= t0], site)
    forecaster = _base_forecaster(site)
    cs = CentralSystem(site, port=args.port, tx_validity_s=int(4 * slot_s),
                       response_timeout_s=5.0, probe_rate_unit=False, ping_interval_s=None, backoff_s=0.05,
                       clock=lambda: clock.now().to_pydatetime())
    await cs.start()
    base = scn.base_load.copy()
    base.index = base.index.as_unit("ns")  # asof() with a nanosecond clock needs a nanosecond index
    ctl = attach(cs, db=str(db), policy=args.policy, period_s=clock.wall_s(slot_s), step=pd.Timedelta(seconds=slot_s),
                 profile_validity_s=4 * slot_s, clock=clock.now, min_replan_s=0.1,
                 solve_timeout_s=max(0.9 * clock.wall_s(slot_s), 0.5),
                 settings=cl.LoopSettings(stale_after_s=3.5 * meter_sim_s, settle_s=60.0),
                 forecaster=forecaster, needs_forecaster=needs, base_load_history=base,
                 base_load_meter=lambda now: float(base.asof(now)), prices=scn.prices)
    ctl.warm_up()  # the clock stands still: a first run's compile does not eat into the demo
    await ctl.start()
    sims = []
    for i, cp in enumerate(site.charge_points):
        q = Quirks(reject_tx_profile=(i % 8 == 3), drop_every_s=(clock.wall_s(4 * 3600) if i % 8 == 6 else None),
                   reconnect_delay_s=clock.wall_s(600))
        sims.append(SimCharger(cp.id, cs.url("").rstrip("/"), "2.0.1" if i % 2 else "1.6", max_current_a=cp.max_current_a,
                               phases=cp.phases, voltage_v=site.voltage_v, meter_interval_s=clock.wall_s(meter_sim_s),
                               quirks=q, clock=lambda: clock.now().to_pydatetime()))
    by_cp = dict(zip(site.charge_point_ids, sims))
    for s in sims:
        s.start()
    delivered: dict[str, float] = {}  # session -> kWh when it left
    active: dict[str, tuple] = {}  # session -> (charger, its session) while plugged in
    rows: list[dict] = []
    try:
        # The clock stands still until every charger is in, so a slow start costs no simulated time;
        # wait as long as chargers keep connecting.
        await wait_all_connected(sims, stall_s=60.0)
        clock.run()
        drivers = [asyncio.create_task(_drive(clock, by_cp[r.charge_point_id], r, t0, delivered, active, Car))
                   for r in day.itertuples()]
        await _monitor(clock, ctl, site, sims, base, t_end, rows)
        for d in drivers:
            d.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        for sim, sess in active.values():  # cars still plugged in at the end
            sim.advance()
        still = {sid: sess.delivered_wh / 1000.0 for sid, (sim, sess) in active.items()}
    finally:
        for s in sims:
            await s.stop()
        await ctl.stop()
        await cs.stop()
    ts = pd.DataFrame(rows).set_index("time")
    metrics = _demo_metrics(ts, day, delivered, still, ctl, site)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    from nowblock.block.sessions import iso_times

    ts_file = ts.copy()
    ts_file.index = pd.Index(iso_times(ts.index, site.timezone), name="time")  # files: the site's zone
    ts_file.to_csv(out / "timeseries.csv")
    from nowblock.sim.plot import local_timeseries, plot_load

    plot_load(local_timeseries(ts, site.timezone), grid_fuse=site.root.id, path=out / "demo.png",
              title=f"nowblock demo: {site.name}, policy {ctl.policy.name}")
    print("\n".join(f"  {k:>24}: {v}" for k, v in metrics.items()))
    print(f"wrote {out / 'demo.png'}, {out / 'metrics.json'}, {out / 'timeseries.csv'}, {db}", flush=True)
    return 0


def _fit_needs(history: pd.DataFrame, site: Site):
    """A needs forecaster fitted on ``history`` in ``site``'s wall clock, or None with too little."""
    try:
        from nowblock.forecast.calendar import Calendar
        from nowblock.forecast.needs import SessionNeedsForecaster

        if len(history) < 10:
            return None
        return SessionNeedsForecaster(calendar=Calendar.for_site(site)).fit(history)
    except Exception as exc:  # the estimate falls back to a simple rule
        log.warning("needs forecaster unavailable: %s", exc)
        return None


def _base_forecaster(site: Site):
    """A base-load forecaster learning ``site``'s daily profile in its own wall clock."""
    try:
        from nowblock.forecast.base_load import BaseLoadForecaster
        from nowblock.forecast.calendar import Calendar

        return BaseLoadForecaster(calendar=Calendar.for_site(site))
    except Exception as exc:
        log.warning("base-load forecaster unavailable: %s", exc)
        return None


async def _drive(clock, sim, r, t0, delivered, active, car_cls) -> None:
    """One session: plug in at arrival (2.0.1 cars report their needs), unplug at departure."""
    arrival, departure = max(r.arrival, t0), r.departure
    await clock.sleep_until(arrival)
    sim.quirks.draw_fraction = float(getattr(r, "draw_fraction", 1.0))
    car = car_cls(phases=int(r.phases), max_current_a=float(r.max_current_a), energy_kwh=float(r.energy_kwh),
                  departure=departure.to_pydatetime())
    try:
        await sim.plug_in(car)
        active[r.session_id] = (sim, sim.sessions[1])
        await clock.sleep_until(departure)
        sim.advance()
        delivered[r.session_id] = active.pop(r.session_id)[1].delivered_wh / 1000.0
        await sim.unplug()
    except Exception as exc:  # a charger offline at that moment: the session is reported short
        log.warning("session %s on %s: %r", r.session_id, sim.cp_id, exc)


async def _monitor(clock, ctl, site, sims, base, t_end, rows) -> None:
    """Sample the block every 5 simulated minutes, print progress every simulated half hour."""
    root = root_index(site)
    next_print = clock.now()
    while clock.now() < t_end:
        now = clock.now()
        draw = np.array([s.draw_a(1) for s in sims])
        ph = np.array([s.car_phases(1) for s in sims])
        cars_a = site.fuse_phase_currents_a(draw, np.arange(len(sims)), ph)[root]
        base_kw = float(base.asof(now))
        house_a = site.base_load_phase_current_a(base_kw)
        row = {"time": now, "base_load_kw": base_kw, "charging_kw": float(site.current_to_kw(draw, ph).sum()),
               "cars_plugged": sum(1 for s in sims if s.sessions), "cars_charging": int((draw > 0).sum())}
        for p, name in enumerate(("L1", "L2", "L3")):
            row[f"households_{name}_a"] = float(house_a[p])
            row[f"cars_{name}_a"] = float(cars_a[p])
            row[f"{site.root.id}_{name}_a"] = float(house_a[p] + cars_a[p])
            row[f"{site.root.id}_{name}_limit_a"] = float(site.limits_a[root, p])
        rows.append(row)
        if now >= next_print:
            last = ctl.history[-1] if ctl.history else None
            load = " ".join(f"{n} {row[f'{site.root.id}_{n}_a']:5.1f}/{row[f'{site.root.id}_{n}_limit_a']:.0f} A"
                            for n in ("L1", "L2", "L3"))
            step = f"{last.policy} {1000 * sum(last.seconds.values()):.0f} ms" if last else "-"
            print(f"{now.tz_convert(site.timezone):%a %H:%M}  {load}  cars {row['cars_charging']:2d} charging / "
                  f"{row['cars_plugged']:2d} plugged  {row['charging_kw']:6.1f} kW  step: {step}", flush=True)
            next_print = now + pd.Timedelta(minutes=30)
        await clock.sleep_until(now + pd.Timedelta(minutes=5))


def _demo_metrics(ts: pd.DataFrame, day: pd.DataFrame, delivered: dict, still: dict, ctl: Controller,
                  site: Site) -> dict:
    """Headline numbers of a demo run (energies [kWh], powers [kW], currents [A], times [s]).

    Demand is judged on the sessions that left during the run; cars still plugged in at the end
    are reported apart (a plan may rightly leave their charging for later)."""
    r = site.root.id
    over = max(0.0, max(float((ts[f"{r}_{n}_a"] - ts[f"{r}_{n}_limit_a"]).max()) for n in ("L1", "L2", "L3")))
    solve = [h.seconds.get("optimize", np.nan) for h in ctl.history if len(h.current_a)]
    got = float(sum(delivered.values()))
    want = float(day.set_index("session_id")["energy_kwh"].reindex(list(delivered)).sum())
    return {
        "sessions_left": len(delivered),
        "energy_requested_kwh": round(want, 1),
        "energy_delivered_kwh": round(got, 1),
        "demand_met": round(got / want, 3) if want > 0 else 1.0,
        "sessions_still_plugged": len(still),
        "energy_delivered_still_plugged_kwh": round(float(sum(still.values())), 1),
        "peak_kw": round(float((ts["base_load_kw"] + ts["charging_kw"]).max()), 1),
        "max_overload_a": round(over, 2),
        "control_steps": len(ctl.history),
        "fallback_steps": sum(1 for h in ctl.history if h.policy != ctl.policy.name),
        "optimize_seconds_median": round(float(np.nanmedian(solve)), 3) if solve else None,
        "policy": ctl.policy.name,
    }
