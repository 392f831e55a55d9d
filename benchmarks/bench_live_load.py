"""The live loop under load: a real ``nowblock serve`` and thousands of raw-frame stations (issue 12).

    pytest benchmarks/bench_live_load.py -s -p no:cacheprovider                 # 200, 1000, 2000 stations
    NOWBLOCK_LOAD_N=200 pytest benchmarks/bench_live_load.py -s -p no:cacheprovider
    NOWBLOCK_LOAD_N=2000 NOWBLOCK_LOAD_PROFILE=/tmp/serve.txt pytest ...   # + the server's py-spy profile

The server is ``python -m nowblock serve`` (the MILP policy, its default 60 s period) in its own
process on 127.0.0.1. The stations are written from the OCPP 1.6J / 2.0.1 specifications as raw
JSON frames over ``websockets`` (half each version), in ``NOWBLOCK_LOAD_PROCS`` (2) client
processes: they boot, answer the optional configuration calls with NotImplemented, accept every
SetChargingProfile, start one transaction each (staggered over 20 s), and send meter values
every 10 s. Each car draws 6 A until its first TxProfile, then what it is offered (at most
16 A); a tenth of the cars ignore their limits and draw 16 A throughout. The site: three-phase
6..16 A points, feeders of 50 points at 60 % of their points' rating, the grid connection at
35 % of all of them.

Reported per size: time from a transaction's start to its first TxProfile (p50, p99, max),
transactions never served, the grid connection's most loaded phase at the end (what the cars
draw 5 s before the fleet stops, one instant for all, against its rating), the server's CPU (one core = 100 %) and its resident memory.
Everything is bounded: fixed counts and a fixed run time.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

SIZES = [int(x) for x in os.environ.get("NOWBLOCK_LOAD_N", "200,1000,2000").split(",")]
PROCS = int(os.environ.get("NOWBLOCK_LOAD_PROCS", "2"))
STAGGER_S = 20.0
METER_S = 10.0
RUN_S = float(os.environ.get("NOWBLOCK_LOAD_RUN_S", "90"))  # after the last start
MAX_A, OVER = 16.0, 0.1
SAMPLE_BEFORE_STOP_S = 5.0  # the grid figure: what every car draws at this long before the fleet stops


def site_toml(n: int) -> str:
    feeders = [list(range(i, min(i + 50, n))) for i in range(0, n, 50)]
    rot = ["L1L2L3", "L2L3L1", "L3L1L2"]
    lines = ['name = "load"', "voltage_v = 230", "", "[[fuses]]", 'id = "grid"',
             f"max_current_a = [{0.35 * n * MAX_A:.1f}, {0.35 * n * MAX_A:.1f}, {0.35 * n * MAX_A:.1f}]"]
    for k, f in enumerate(feeders):
        a = 0.6 * len(f) * MAX_A
        lines += ["", "[[fuses]]", f'id = "feeder{k}"', 'parent = "grid"', f"max_current_a = [{a:.1f}, {a:.1f}, {a:.1f}]"]
    for k, f in enumerate(feeders):
        for i in f:
            lines += ["", "[[charge_points]]", f'id = "CP{i:05d}"', f'fuse = "feeder{k}"', f"max_current_a = {MAX_A}",
                      "min_current_a = 6", "phases = 3", f'phase_rotation = "{rot[i % 3]}"']
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Station:
    """One raw-frame station with one car (see the module docstring)."""

    def __init__(self, port: int, cp_id: str, version: str, start_at: float, over: bool, stop_at: float):
        self.port, self.cp_id, self.version = port, cp_id, version
        self.start_at, self.over, self.stop_at = start_at, over, stop_at
        self.tx: str | None = None
        self.limit_a: float | None = None
        self.t_start = self.t_first = None
        self.pending: dict[str, asyncio.Future] = {}
        self.seq = 0
        self.draw_end: float | None = None

    def draw_a(self) -> float:
        if self.over:
            return MAX_A
        return 6.0 if self.limit_a is None else min(self.limit_a, MAX_A) if self.limit_a >= 6.0 else 0.0

    async def call(self, ws, action: str, payload: dict) -> dict:
        uid = uuid.uuid4().hex[:12]
        fut = asyncio.get_running_loop().create_future()
        self.pending[uid] = fut
        await ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(fut, 60)

    async def on_call(self, ws, uid: str, action: str, p: dict) -> None:
        if action == "SetChargingProfile":
            prof = p.get("csChargingProfiles") or p.get("chargingProfile")
            if prof["chargingProfilePurpose"] == "TxProfile" and str(prof.get("transactionId")) == str(self.tx):
                sched = prof["chargingSchedule"]
                sched = sched[0] if isinstance(sched, list) else sched
                self.limit_a = float(sched["chargingSchedulePeriod"][0]["limit"])
                if self.t_first is None:
                    self.t_first = time.monotonic()
            await ws.send(json.dumps([3, uid, {"status": "Accepted"}]))
        elif action in ("ClearChargingProfile",):
            await ws.send(json.dumps([3, uid, {"status": "Accepted"}]))
        else:
            await ws.send(json.dumps([4, uid, "NotImplemented", "not here", {}]))

    async def read(self, ws) -> None:
        async for raw in ws:
            m = json.loads(raw)
            if m[0] == 2:
                await self.on_call(ws, m[1], m[2], m[3])
            elif m[1] in self.pending:
                fut = self.pending.pop(m[1])
                if not fut.done():
                    fut.set_result(m[2] if m[0] == 3 else {"error": m[2]})

    def meter(self) -> tuple[str, dict]:
        a = self.draw_a()
        if self.version == "1.6":
            sv = [{"value": f"{a:.1f}", "measurand": "Current.Import", "unit": "A", "phase": f"L{i}"} for i in (1, 2, 3)]
            return "MeterValues", {"connectorId": 1, "transactionId": int(self.tx),
                                   "meterValue": [{"timestamp": _now(), "sampledValue": sv}]}
        self.seq += 1
        sv = [{"value": a, "measurand": "Current.Import", "phase": f"L{i}", "unitOfMeasure": {"unit": "A"}}
              for i in (1, 2, 3)]
        return "TransactionEvent", {"eventType": "Updated", "timestamp": _now(), "triggerReason": "MeterValuePeriodic",
                                    "seqNo": self.seq, "transactionInfo": {"transactionId": self.tx},
                                    "meterValue": [{"timestamp": _now(), "sampledValue": sv}]}

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        proto = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        async with connect(f"ws://127.0.0.1:{self.port}/{self.cp_id}", subprotocols=[proto], open_timeout=60,
                           ping_interval=None, max_size=2**20) as ws:
            reader = asyncio.get_running_loop().create_task(self.read(ws))
            if self.version == "1.6":
                await self.call(ws, "BootNotification", {"chargePointVendor": "raw", "chargePointModel": "load"})
            else:
                await self.call(ws, "BootNotification", {"reason": "PowerUp",
                                                         "chargingStation": {"vendorName": "raw", "model": "load"}})
            await asyncio.sleep(max(0.0, self.start_at - time.monotonic()))
            if self.version == "1.6":
                await self.call(ws, "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"})
                res = await self.call(ws, "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                               "timestamp": _now()})
                self.tx = str(res["transactionId"])
            else:
                self.tx = uuid.uuid4().hex[:16]
                await self.call(ws, "TransactionEvent", {
                    "eventType": "Started", "timestamp": _now(), "triggerReason": "CablePluggedIn", "seqNo": 0,
                    "transactionInfo": {"transactionId": self.tx}, "evse": {"id": 1, "connectorId": 1}})
            self.t_start = time.monotonic()
            sample = asyncio.get_running_loop().create_task(self._sample_draw())
            while time.monotonic() < self.stop_at:
                action, payload = self.meter()
                await self.call(ws, action, payload)
                await asyncio.sleep(METER_S * (0.9 + 0.2 * random.random()))
            reader.cancel()
            sample.cancel()

    async def _sample_draw(self) -> None:
        # Every station's draw at one instant before the fleet stops: after stop_at the stations
        # leave one by one, each keeping the last limit it read, and a sum then mixes a lowered
        # limit one station received with a raise another no longer did.
        await asyncio.sleep(max(0.0, self.stop_at - SAMPLE_BEFORE_STOP_S - time.monotonic()))
        self.draw_end = self.draw_a()


def _fleet(port: int, specs: list, out) -> None:
    async def main():
        st = [Station(port, *s) for s in specs]
        res = await asyncio.gather(*(s.run() for s in st), return_exceptions=True)
        out.send([{"cp": s.cp_id, "over": s.over, "start": s.t_start, "first": s.t_first, "limit": s.limit_a,
                   "draw": (s.draw_end if s.draw_end is not None else s.draw_a()) if s.tx else 0.0, "error": repr(r) if isinstance(r, Exception) else None}
                  for s, r in zip(st, res)])

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(n: int, tmp: Path) -> dict:
    """One run with ``n`` stations; returns the figures (see the module docstring)."""
    import psutil

    (tmp / "site.toml").write_text(site_toml(n))
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp / f"serve-{n}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "nowblock", "--log-level", "INFO", "serve", "--site",
                             str(tmp / "site.toml"), "--db", str(tmp / f"load-{n}.sqlite"), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        t0 = time.monotonic()
        while True:  # the port opens after the policy's warm-up
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > 120:
                    raise RuntimeError(f"serve did not start: {(tmp / f'serve-{n}.log').read_text()[-2000:]}")
                time.sleep(0.2)
        ps = psutil.Process(proc.pid)
        cpu0, wall0 = sum(ps.cpu_times()[:2]), time.monotonic()
        spy = None
        if os.environ.get("NOWBLOCK_LOAD_PROFILE"):  # where the server's time goes (py-spy, collapsed stacks)
            spy = subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-r", "50", "-f", "raw", "-o",
                                    os.environ["NOWBLOCK_LOAD_PROFILE"], "-d", str(int(15 + STAGGER_S + RUN_S))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = time.monotonic() + 15.0  # time to connect and boot every station
        stop = base + STAGGER_S + RUN_S
        rng = random.Random(n)
        specs = [(f"CP{i:05d}", "1.6" if i % 2 == 0 else "2.0.1", base + rng.uniform(0, STAGGER_S), rng.random() < OVER,
                  stop) for i in range(n)]
        chunks = [specs[k::PROCS] for k in range(PROCS)]
        pipes, procs = [], []
        for c in chunks:
            a, b = mp.Pipe(duplex=False)
            p = mp.get_context("spawn").Process(target=_fleet, args=(port, c, b))
            p.start()
            pipes.append(a)
            procs.append(p)
        rows = [r for a in pipes for r in a.recv()]
        for p in procs:
            p.join(30)
        cpu = (sum(ps.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
        rss = ps.memory_info().rss / 2**20
        if spy is not None:
            spy.wait(120)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    delays = np.array([r["first"] - r["start"] for r in rows if r["start"] is not None and r["first"] is not None])
    started = [r for r in rows if r["start"] is not None]
    never = sum(1 for r in started if r["first"] is None)
    grid_a = 0.35 * n * MAX_A
    drawn = sum(r["draw"] for r in rows)  # three-phase cars: the same on every phase
    return {"stations": n, "started": len(started), "errors": sum(1 for r in rows if r["error"]),
            "first_profile_p50_s": float(np.percentile(delays, 50)) if len(delays) else float("nan"),
            "first_profile_p99_s": float(np.percentile(delays, 99)) if len(delays) else float("nan"),
            "first_profile_max_s": float(delays.max()) if len(delays) else float("nan"),
            "never_served": never, "grid_drawn_a": round(drawn, 1), "grid_rating_a": round(grid_a, 1),
            "server_cpu_percent": round(100 * cpu, 1), "server_rss_mb": round(rss, 1)}


@pytest.mark.parametrize("n", SIZES)
def test_live_loop_under_load(n, tmp_path, benchmark):
    out = benchmark.pedantic(run_load, args=(n, tmp_path), rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    print("\n" + json.dumps(out))
    assert out["started"] == n and out["errors"] == 0
