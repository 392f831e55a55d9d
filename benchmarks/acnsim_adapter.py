"""ACN-Sim's own algorithms on a nowblock scenario folder (run with a python that has acnportal).

acnportal pins its own stack, so it lives in a separate venv, never in nowblock's dependencies::

    python3 -m venv /tmp/acnvenv && /tmp/acnvenv/bin/pip install acnportal
    /tmp/acnvenv/bin/python benchmarks/acnsim_adapter.py SCENARIO_FOLDER

Reads ``site.toml`` and ``sessions.csv`` (nothing of nowblock is imported) and prints one JSON
line: the share of requested energy that ACN-Sim's ``RoundRobin(first_come_first_served)``,
``SortedSchedulingAlgo(earliest_deadline_first)`` and ``SortedSchedulingAlgo(least_laxity_first)``
deliver, in 5-minute periods, re-scheduling every period.

Mapping (ACN-Sim models single-phase EVSEs; nowblock models phases):

* one ACN EVSE per session (sessions on one charging point never overlap), rated
  ``min(car, charging point)`` [A], voltage ``230 V x the car's phases`` so that amperes map to
  the same kilowatts, phase angle 0;
* one ACN constraint per grid phase of every fuse: the sum of the currents of the sessions whose car
  loads that phase (the car's phases through the charging point's phase rotation) stays within
  the fuse's rating (the same linear rows nowblock's policies respect);
* continuous pilots with no minimum current: ACN's algorithms are not held to IEC 61851's
  0-or-at-least-6 A rule (an advantage over nowblock's policies), and the cars' batteries are
  ACN's ideal ``Battery`` (no taper near full, another advantage);
* arrival rounded up and departure rounded down to the 5-minute grid, as nowblock's simulator
  does; the scheduler sees the real departure and energy (known needs).
"""

from __future__ import annotations

import json
import math
import sys
import time
import tomllib
import warnings
from datetime import datetime
from pathlib import Path

import pandas as pd

warnings.filterwarnings("ignore")

from acnportal import acnsim  # noqa: E402
from acnportal.acnsim.network import ChargingNetwork, Current  # noqa: E402
from acnportal.algorithms import (  # noqa: E402
    RoundRobin,
    SortedSchedulingAlgo,
    earliest_deadline_first,
    first_come_first_served,
    least_laxity_first,
)

PHASES = ("L1", "L2", "L3")
PERIOD_MIN = 5


def build(folder: Path):
    site = tomllib.loads((folder / "site.toml").read_text())
    s = pd.read_csv(folder / "sessions.csv")
    s["arrival"] = pd.to_datetime(s["arrival"], utc=True, format="ISO8601")
    s["departure"] = pd.to_datetime(s["departure"], utc=True, format="ISO8601")
    voltage = float(site.get("voltage_v", 230.0))
    cps = {cp["id"]: cp for cp in site["charge_points"]}
    fuses = {f["id"]: f for f in site["fuses"]}
    t0 = s["arrival"].min().floor(f"{PERIOD_MIN}min")

    def ancestors(fuse_id):
        while fuse_id is not None:
            yield fuse_id
            fuse_id = fuses[fuse_id].get("parent")

    def make():
        net = ChargingNetwork()
        loads: dict[tuple[str, int], list[str]] = {}
        events = []
        for r in s.itertuples():
            cp = cps[r.charge_point_id]
            ph = int(min(r.phases, cp.get("phases", 3)))
            amps = float(min(r.max_current_a, cp.get("max_current_a", 32.0)))
            net.register_evse(acnsim.EVSE(r.session_id, max_rate=amps, min_rate=0), voltage * ph, 0)
            rot = cp.get("phase_rotation", "L1L2L3")
            for k in range(ph):
                p = PHASES.index(rot[2 * k: 2 * k + 2])
                for f in ancestors(cp["fuse"]):
                    loads.setdefault((f, p), []).append(r.session_id)
            a = math.ceil((r.arrival - t0) / pd.Timedelta(minutes=PERIOD_MIN))
            d = math.floor((r.departure - t0) / pd.Timedelta(minutes=PERIOD_MIN))
            if d <= a or r.energy_kwh <= 0:
                continue
            kw = amps * voltage * ph / 1000.0
            battery = acnsim.Battery(capacity=float(r.energy_kwh), init_charge=0.0, max_power=kw)
            ev = acnsim.EV(a, d, float(r.energy_kwh), r.session_id, r.session_id, battery, estimated_departure=d)
            events.append(acnsim.PluginEvent(a, ev))
        for (f, p), ids in loads.items():
            net.add_constraint(Current(ids), float(fuses[f]["max_current_a"][p]), name=f"{f}-{PHASES[p]}")
        return net, acnsim.EventQueue(events)

    requested = float(s["energy_kwh"].sum())
    return make, t0, requested


def main(folder: str) -> None:
    make, t0, requested = build(Path(folder))
    algos = {
        "round_robin": lambda: RoundRobin(first_come_first_served),
        "edf": lambda: SortedSchedulingAlgo(earliest_deadline_first),
        "llf": lambda: SortedSchedulingAlgo(least_laxity_first),
    }
    out: dict = {}
    w0 = time.perf_counter()
    for name, algo in algos.items():
        net, events = make()
        sch = algo()
        sch.max_recompute = 1  # re-schedule every period, as nowblock's simulator does
        sim = acnsim.Simulator(net, sch, events, datetime.fromtimestamp(t0.timestamp()), period=PERIOD_MIN,
                               verbose=False)
        t = time.perf_counter()
        sim.run()
        delivered = sum(ev.energy_delivered for ev in sim.ev_history.values())
        out[name] = delivered / requested
        out[f"{name}_wall_s"] = time.perf_counter() - t
        # ACN-Sim's own check of every constraint over the whole run (True: never exceeded).
        out[f"{name}_feasible"] = bool(net.is_feasible(sim.charging_rates))
    out["wall_s"] = time.perf_counter() - w0
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
