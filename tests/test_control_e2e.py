"""End to end over real WebSockets: central system + controller + simulated chargers.

Every test runs the real :class:`nowblock.ocpp.server.CentralSystem` on a free localhost port
with :func:`nowblock.control.attach` (SQLite store in tmp_path, the MILP policy) and
simulated OCPP 1.6J / 2.0.1 stations from :mod:`nowblock.sim.chargers`. What the cars *draw*
(the simulated physics, after each charger applied the profiles it accepted) is what the
fuse checks use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from nowblock.loop.closed_loop import LoopSettings
from nowblock.control import Controller, attach
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.server import CentralSystem
from nowblock.testing import eventually
from nowblock.sim.chargers import Car, Quirks, SimCharger, wait_all_connected
from nowblock.block.site import ChargePoint, Fuse, Site
from nowblock.store import open_store

pytestmark = pytest.mark.slow

FAST = LoopSettings(settle_s=0.8, stale_after_s=5.0)


def _site(root_a: float, n: int, *, feeder_a: float | None = None, phases=None) -> Site:
    rot = ["L1L2L3", "L2L3L1", "L3L1L2"]
    cps = tuple(ChargePoint(id=f"CP{i:02d}", fuse="feeder", max_current_a=32.0, min_current_a=6.0,
                            phases=(phases or [3] * n)[i], phase_rotation=rot[i % 3]) for i in range(n))
    return Site("e2e", (Fuse("grid", (root_a,) * 3), Fuse("feeder", ((feeder_a or 2 * root_a),) * 3, "grid")), cps)


POLICY = "milp"  # the controller's default


@contextlib.asynccontextmanager
async def block(tmp_path, site, versions, *, quirks=None, meter_s=0.3, db=None, **ctl_kw):
    """A running block: central system, controller and one simulated station per charge point."""
    cs = CentralSystem(site, port=0, response_timeout_s=2.0, backoff_s=0.05, retries=1,
                       tx_validity_s=30, probe_rate_unit=False)
    await cs.start()
    kw = dict(policy=POLICY, period_s=1.0, min_replan_s=0.2, settings=FAST, solve_timeout_s=2.0)
    kw.update(ctl_kw)
    ctl = attach(cs, db=str(db or tmp_path / "block.sqlite"), **kw)
    await ctl.start()
    sims = [SimCharger(cp.id, cs.url("").rstrip("/"), versions[i], meter_interval_s=meter_s,
                       max_current_a=cp.max_current_a, phases=cp.phases, quirks=(quirks or {}).get(cp.id))
            for i, cp in enumerate(site.charge_points)]
    for s in sims:
        s.start()
    try:
        await wait_all_connected(sims)
        yield cs, ctl, sims
    finally:
        for s in sims:
            await s.stop()
        await ctl.stop()
        await cs.stop()


def fuse_phase_draw_a(site: Site, sims) -> np.ndarray:
    """Current [A] on every fuse phase from what the simulated cars draw now, (n_fuses, 3)."""
    draw = np.array([s.draw_a(1) for s in sims])
    phases = np.array([s.car_phases(1) for s in sims])
    return site.fuse_phase_currents_a(draw, np.arange(len(sims)), phases)


async def wait_steps(ctl: Controller, n: int, timeout: float = 20.0) -> None:
    """Wait until ``n`` more control steps have finished."""
    target = len(ctl.history) + n
    t0 = time.monotonic()
    while len(ctl.history) < target:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {len(ctl.history)} of {target} control steps")
        await asyncio.sleep(0.02)


def limit_of(ctl: Controller, sid_prefix: str) -> float:
    x = ctl.history[-1].current_a
    return float(x[[i for i in x.index if i.startswith(sid_prefix)]].iloc[0])


class DrawWatch:
    """Samples what the simulated cars draw on every fuse phase, every ``every_s`` [s], in the
    background: the worst overload [A] seen and the grid connection's most loaded phase [A]."""

    def __init__(self, site: Site, sims, every_s: float = 0.005) -> None:
        self.site, self.sims, self.every_s = site, sims, every_s
        self.worst_a, self.used_a, self.samples = -np.inf, [], 0
        self._task: asyncio.Task | None = None

    def sample(self) -> None:
        load = fuse_phase_draw_a(self.site, self.sims)
        over = float((load - self.site.limits_a).max())
        if over > self.worst_a:
            self.worst_a, self.worst_load = over, load
        self.used_a.append(float(load[0].max()))
        self.samples += 1

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)

    def __enter__(self) -> "DrawWatch":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()
        self.sample()


async def test_congested_block_stays_under_every_fuse_phase(tmp_path):
    site = _site(root_a=48.0, n=6, phases=[3, 3, 3, 3, 1, 3])
    versions = ["1.6", "2.0.1", "1.6", "2.0.1", "1.6", "2.0.1"]
    quirks = {"CP02": Quirks(reject_tx_profile=True), "CP05": Quirks(draw_fraction=0.5)}
    async with block(tmp_path, site, versions, quirks=quirks) as (cs, ctl, sims):
        # Every station holds its fail-safe TxDefaultProfile (installed after its boot), and the
        # controller knows it; before that a car would draw the charger's own maximum.
        await eventually(lambda: not ctl.failsafe_missing(ctl.clock())
                         and all(any(p.purpose == pr.TX_DEFAULT for p in s.profiles) for s in sims), timeout_s=30)
        assert 0 < ctl.failsafe_a.min()  # 8 A here: idle points cost room, unlike a 0 A fail-safe
        t0 = pr.utcnow()
        # Sampled from the first plug-in on. Each car plugs in once the cars before it were
        # planned, so the plan has shared out all the room there is, and the new car draws its
        # default before the step it triggers plans it: the room held for idle points covers that.
        with DrawWatch(site, sims) as watch:
            for i, s in enumerate(sims):
                await s.plug_in(Car(phases=1 if i == 4 else 3, energy_kwh=30.0,
                                    departure=t0 + timedelta(hours=2 + i)))
                await eventually(lambda: ctl.history and len(ctl.history[-1].current_a) == i + 1, timeout_s=30)
            await wait_steps(ctl, 8)
        worst, used = watch.worst_a, watch.used_a
        assert watch.samples >= 20
        assert worst <= 1e-6, f"a fuse phase was overloaded by {worst:.2f} A: {watch.worst_load.tolist()}"
        assert max(used) >= 0.7 * 48.0  # the connection is shared out, not left idle
        # Every running transaction got a TxProfile (or, for the rejecting charger, its fallback).
        assert all(any(a == "SetChargingProfile" for a, _ in s.received) for s in sims)
        # The store logged what was sent and what the charger answered.
        prof = ctl.store.profiles("CP02")
        assert prof["status"].str.contains("TxProfile:Rejected").any()
        assert (prof["purpose"] == pr.TX_DEFAULT).any() and prof["accepted_limit_a"].notna().any()
        assert (ctl.store.profiles("CP01")["purpose"] == pr.TX).any()


async def test_needs_reported_by_a_2_0_1_car_change_its_allocation(tmp_path):
    # Every step waits for the MILP: at load 6-16 its first solve (numba's compiling) outran the
    # 1 s wait for new cars, and EDF's fallback, or a late plan, answered 'before' and 'after'
    # (before 0-17 A, after 30-32 A), so the test compared whichever policies answered.
    site = _site(root_a=32.0, n=2)
    wait = dict(solve_timeout_s=30.0, new_car_timeout_s=30.0, max_wait_s=30.0)
    async with block(tmp_path, site, ["2.0.1", "2.0.1"], **wait) as (cs, ctl, sims):
        now = pr.utcnow()
        await sims[0].plug_in(Car(energy_kwh=20.0, departure=now + timedelta(hours=8)))
        await sims[1].plug_in(Car(energy_kwh=20.0, departure=now + timedelta(hours=8)))
        await wait_steps(ctl, 2)
        before = limit_of(ctl, "CP01")
        n_before = len(ctl.history)
        # CP01's driver now says: leaving in 1.5 hours, needing 20 kWh (NotifyEVChargingNeeds).
        s = sims[1].sessions[1]
        s.car.departure = pr.utcnow() + timedelta(hours=1.5)
        await sims[1].client.needs(s, sims[1])
        await wait_steps(ctl, 2)
        after = limit_of(ctl, "CP01")
        assert all((h.policy, h.status) == ("milp", "ok") for h in ctl.history[n_before - 1:])
        assert after > before
        assert after >= limit_of(ctl, "CP00")
        snap = cs.state.snapshot()
        assert bool(snap.loc[snap["charge_point_id"] == "CP01", "needs_known"].iloc[0])


async def test_a_car_drawing_less_frees_current_for_others(tmp_path):
    site = _site(root_a=32.0, n=2)
    # An equal split makes the effect plain: without the closed loop each car is offered 16 A.
    async with block(tmp_path, site, ["1.6", "2.0.1"], policy="equal") as (cs, ctl, sims):
        now = pr.utcnow()
        await sims[0].plug_in(Car(max_current_a=10.0, energy_kwh=40.0))  # its on-board charger takes 10 A
        await sims[1].plug_in(Car(energy_kwh=40.0, departure=now + timedelta(hours=3)))
        await wait_steps(ctl, 2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            await wait_steps(ctl, 1)
            if limit_of(ctl, "CP01") >= 32.0 - 10.0 - FAST.margin_a - 1.0:
                break
        assert limit_of(ctl, "CP00") <= 10.0 + FAST.margin_a + FAST.raise_step_a
        assert limit_of(ctl, "CP01") >= 32.0 - 10.0 - FAST.margin_a - 1.0
        assert sims[1].draw_a(1) >= 20.0
        assert sims[0].draw_a(1) > 0  # the slow car was not paused
        assert (fuse_phase_draw_a(site, sims) <= site.limits_a + 1e-6).all()


async def test_a_station_that_drops_off_keeps_its_failsafe_and_is_replanned(tmp_path):
    site = _site(root_a=40.0, n=3)
    quirks = {"CP00": Quirks(reconnect_delay_s=600.0)}  # offline until the test lets it back
    async with block(tmp_path, site, ["2.0.1", "1.6", "2.0.1"], quirks=quirks, profile_validity_s=2.0) as (cs, ctl, sims):
        failsafe = ctl.failsafe_a["CP00"]
        assert 6.0 <= failsafe <= 40.0 / 3
        for s in sims:
            await s.plug_in(Car(energy_kwh=40.0, departure=pr.utcnow() + timedelta(hours=4)))
        await wait_steps(ctl, 2)
        # The fail-safe TxDefaultProfile (connector 0) was installed at boot; the idle default on
        # connector 1 (renewed) may come first in the list.
        defaults = [p for p in sims[0].profiles if p.purpose == pr.TX_DEFAULT and p.connector_id == 0]
        assert defaults and defaults[0].periods[0].limit == failsafe
        n_before = len(sims[0].received)
        sims[0].drop()
        await eventually(lambda: not cs.state.station("CP00").connected, timeout_s=10)
        # Offline longer than its TxProfile (2 s) lives: alone, it falls back to the fail-safe.
        await eventually(lambda: pr.active_limit_a([p for p in sims[0].profiles if p.purpose == pr.TX], 1,
                                                   pr.utcnow(), transaction_id=sims[0].sessions[1].transaction_id)
                         is None, timeout_s=15)
        assert sims[0].applied_limit_a(1) == failsafe

        def reserved_cp00():
            last = ctl.history[-1] if ctl.history else None
            return last is not None and any(i.startswith("CP00") for i in last.reserved)

        await eventually(reserved_cp00, timeout_s=15)  # counted at its maximum while unseen
        assert not sims[0].connected.is_set()
        assert (fuse_phase_draw_a(site, sims) <= site.limits_a + 1e-6).all()
        sims[0].reconnect()
        await sims[0].wait_connected(timeout=10)
        # Re-planned: a fresh TxProfile after reconnecting, and the car back in the plan.
        await eventually(lambda: len(sims[0].received) > n_before
                         and any(p.purpose == pr.TX for p in sims[0].profiles), timeout_s=20)
        await eventually(lambda: "CP00" in "".join(ctl.history[-1].current_a.index), timeout_s=20)


async def test_solver_time_out_keeps_the_block_safe(tmp_path):
    site = _site(root_a=32.0, n=4)

    class Hangs:
        name = "hangs"

        def schedule(self, snapshot):
            time.sleep(1.5)
            return pd.Series(32.0, index=snapshot.cars.index)  # too late, and unsafe anyway

    async with block(tmp_path, site, ["1.6", "2.0.1"] * 2, policy=Hangs(), solve_timeout_s=0.2) as (cs, ctl, sims):
        for s in sims:
            await s.plug_in(Car(energy_kwh=30.0, departure=pr.utcnow() + timedelta(hours=3)))
        await wait_steps(ctl, 3)  # each step ends after its profiles were answered and applied
        assert all(r.policy == "edf" for r in ctl.history[-3:])
        assert (fuse_phase_draw_a(site, sims) <= site.limits_a + 1e-6).all()
        assert fuse_phase_draw_a(site, sims)[0].max() >= 24.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(site_toml, port, db) -> subprocess.Popen:
    # The output goes to a file next to the site: a pipe nobody reads fills up and stalls serve.
    log_path = Path(site_toml).with_name("serve.log")
    with open(log_path, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nowblock.cli", "--log-level", "INFO", "serve", "--site", str(site_toml),
             "--port", str(port), "--db", str(db)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proc.log_path = log_path
    return proc


def _wait_listening(proc, port, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.log_path.read_text()[-4000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError("serve did not start")


async def test_killing_serve_mid_transaction_loses_nothing_acknowledged(tmp_path, store_url):
    site = _site(root_a=32.0, n=2)
    site.to_toml(tmp_path / "site.toml")
    db, port = store_url, _free_port()  # a SQLite file, then a PostgreSQL schema (tests/conftest.py)
    proc = _serve(tmp_path / "site.toml", port, db)
    sims = []
    try:
        await asyncio.to_thread(_wait_listening, proc, port)
        url = f"ws://127.0.0.1:{port}"
        sims = [SimCharger("CP00", url, "1.6", meter_interval_s=60, quirks=Quirks(reconnect_delay_s=0.3)),
                SimCharger("CP01", url, "2.0.1", meter_interval_s=60, quirks=Quirks(reconnect_delay_s=0.3))]
        for s in sims:
            s.start()
        await wait_all_connected(sims)
        tx = [await s.plug_in(Car(energy_kwh=30.0, departure=pr.utcnow() + timedelta(hours=3))) for s in sims]
        acked = []
        for _ in range(3):
            await asyncio.sleep(0.2)
            for s in sims:
                await s.send_meter_now()  # returns once the central system acknowledged it
                acked.append((s.cp_id, s.register_wh[1]))
        proc.send_signal(signal.SIGKILL)  # no shutdown, no checkpoint
        proc.wait(10)

        store = open_store(db)
        open_tx = store.load_open_transactions()
        assert sorted(open_tx["transaction_id"]) == sorted(tx)
        mv = store.meter_values()
        for cp, wh in acked:
            assert (np.isclose(mv.loc[mv["station_id"] == cp, "energy_wh"], wh, atol=0.1)).any(), (cp, wh)
        energy_before = open_tx.set_index("charge_point_id")["energy_delivered_kwh"]
        store.close()

        # Counted while serve is down, so a profile sent the instant the stations reconnect counts as fresh.
        n_recv = [len(s.received) for s in sims]
        proc = _serve(tmp_path / "site.toml", port, db)  # restart on the same database
        await asyncio.to_thread(_wait_listening, proc, port)
        await wait_all_connected(sims)
        for s in sims:
            await s.send_meter_now()
        # Control resumes: each running transaction gets a fresh TxProfile from the new process.
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            fresh = [[p for a, p in s.received[n:] if a == "SetChargingProfile"
                      and p.get("charging_profile_purpose") == pr.TX] for s, n in zip(sims, n_recv)]
            if all(fresh):
                break
            await asyncio.sleep(0.2)
        assert all(fresh), "no TxProfile after the restart"
        store = open_store(db)
        after = store.load_open_transactions().set_index("charge_point_id")
        assert sorted(after["transaction_id"]) == sorted(tx)  # the same transactions continue
        assert (after["energy_delivered_kwh"] >= energy_before.reindex(after.index) - 1e-9).all()
        store.close()
    finally:
        for s in sims:
            await s.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_demo_runs_an_accelerated_evening_and_reports(tmp_path):
    import json

    from nowblock.cli import main

    out = tmp_path / "demo"
    # At the demo's default speed. Without a margin on the other load (``base_load_margin``), a
    # rise of the households' load beyond its forecast at a slot boundary overloaded grid L3 by
    # 0.7-1.7 A until the next step, at 480x and 1200x, once the policy filled the fuse.
    rc = main(["demo", "--hours", "2", "--speed", "480", "--start-hour", "17", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["control_steps"] > 0 and m["policy"] == POLICY
    assert m["max_overload_a"] == 0.0
    assert m["sessions_left"] + m["sessions_still_plugged"] > 0
    assert (out / "demo.png").stat().st_size > 10_000
    ts = pd.read_csv(out / "timeseries.csv")
    assert pd.to_datetime(ts["time"]).min() < pd.Timestamp("2026-03-03 16:10", tz="UTC")  # 17:00 local
    # The samples cover the run (every 5 simulated minutes; a busy machine may sample more sparsely,
    # never less than the whole run).
    times = pd.to_datetime(ts["time"], utc=True)
    assert times.max() - times.min() >= pd.Timedelta(minutes=100) and times.is_monotonic_increasing
    assert {"grid_L1_a", "grid_L1_limit_a", "cars_charging"} <= set(ts.columns)
