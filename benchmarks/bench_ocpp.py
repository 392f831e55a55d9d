"""Load benchmark of the central system: many simulated chargers on 127.0.0.1, one server process.

    pytest benchmarks/bench_ocpp.py -s --benchmark-columns=min,median,max      # 1 (baseline), 500, 2000
    NOWBLOCK_BENCH_N=1,500 pytest benchmarks/bench_ocpp.py -s                    # fewer

The server (``CentralSystem``, built-in control off, fail-safe TxDefault at boot on) runs in its
own process so its CPU and memory are its own; the chargers run in ``NOWBLOCK_BENCH_CHARGER_PROCS``
(2) other processes. Half the chargers speak 1.6, half 2.0.1; each
plugs in a car and sends meter values every 10 s (1.6 MeterValues, 2.0.1 TransactionEvent
Updated). After everyone is charging, a steady window of ``WINDOW_S`` seconds measures the
server's handler latency (frame received to answer sent, inside the server), its CPU share and
resident memory, and the chargers' round-trip time. pytest-benchmark then times pushing a new
TxProfile to every running transaction (``set_limits`` for all, answers awaited) in three rounds;
the run with one charger is the baseline. Everything is bounded: fixed counts, fixed windows.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import os
import statistics
import time
from collections import deque

import numpy as np
import pytest

WINDOW_S = float(os.environ.get("NOWBLOCK_BENCH_WINDOW_S", "30"))
METER_S = 10.0
SIZES = [int(x) for x in os.environ.get("NOWBLOCK_BENCH_N", "1,500,2000").split(",")]
# "1": validate JSON schemas on the event loop (what ``nowblock serve`` does) instead of the
# ocpp library's default thread-pool hop.
SYNC_VALIDATION = os.environ.get("NOWBLOCK_BENCH_SYNC_VALIDATION", "0") == "1"
FLEET_PROCS = int(os.environ.get("NOWBLOCK_BENCH_CHARGER_PROCS", "2"))


# ---- server process --------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _server_main(n: int, port_q, pipe) -> None:
    from nowblock.ocpp.connection import CsmsConnection
    from nowblock.ocpp.server import CentralSystem
    from nowblock.testing import make_test_site

    lat: deque[float] = deque(maxlen=1_000_000)
    gc_pauses: list[float] = []
    gc_t0 = [0.0]

    def on_gc(phase, info):  # how much of the tail is the garbage collector's
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            gc_pauses.append(time.perf_counter() - gc_t0[0])

    gc.callbacks.append(on_gc)
    original = CsmsConnection._route_call

    async def timed(self, msg):
        t0 = time.perf_counter()
        try:
            await original(self, msg)
        finally:
            lat.append(time.perf_counter() - t0)

    CsmsConnection._route_call = timed

    async def main():
        if SYNC_VALIDATION:  # what `nowblock serve` does at its entry point
            import ocpp.messages

            ocpp.messages.ASYNC_VALIDATION = False
        site = make_test_site(n, grid_a=32.0 * n)
        cs = CentralSystem(site, port=0, response_timeout_s=30.0, heartbeat_s=3600,
                           ping_interval_s=None)
        await cs.start()
        port_q.put(cs.port)
        loop = asyncio.get_running_loop()
        mark = (time.perf_counter(), time.process_time())
        while True:
            cmd, arg = await loop.run_in_executor(None, pipe.recv)
            if cmd == "running":
                pipe.send(len(cs.state.running()))
            elif cmd == "reset":
                lat.clear()
                gc_pauses.clear()
                mark = (time.perf_counter(), time.process_time())
                pipe.send(True)
            elif cmd == "stats":
                wall, cpu = time.perf_counter() - mark[0], time.process_time() - mark[1]
                a = np.array(lat) * 1000.0
                pipe.send({"messages": len(a), "wall_s": wall, "cpu_percent": 100.0 * cpu / wall,
                           "rss_mb": _rss_mb(), **{f"handler_p{q}_ms": float(np.percentile(a, q)) if len(a) else
                                                   float("nan") for q in (50, 95, 99)},
                           "handler_max_ms": float(a.max()) if len(a) else float("nan"),
                           "gc_pause_total_s": float(sum(gc_pauses)),
                           "gc_pause_max_ms": 1000.0 * max(gc_pauses, default=0.0),
                           "gc_tracked_objects": len(gc.get_objects()),
                           "gc_collections": [g["collections"] for g in gc.get_stats()]})
            elif cmd == "push":
                t0 = time.perf_counter()
                limits = {(t.cp_id, t.connector_id): arg for t in cs.state.running()}
                recs = await cs.set_limits(limits, retries=0)
                pipe.send({"seconds": time.perf_counter() - t0, "sent": len(limits),
                           "accepted": sum(r.purpose == "TxProfile" for r in recs.values())})
            elif cmd == "stop":
                await cs.stop()
                pipe.send(True)
                return

    asyncio.run(main())


# ---- chargers (separate processes, so the server's numbers are not the chargers' bottleneck) ----
def _fleet_main(ids: list[int], port: int, pipe) -> None:
    import ocpp.messages

    from nowblock.sim import chargers as ch

    ocpp.messages.ASYNC_VALIDATION = False  # the chargers' side: no thread hop per message
    rtt: deque[float] = deque(maxlen=1_000_000)
    for cls in (ch._Client16, ch._Client201):
        orig = cls.meter

        async def meter(self, s, m, _orig=orig):
            t0 = time.perf_counter()
            await _orig(self, s, m)
            rtt.append(time.perf_counter() - t0)

        cls.meter = meter

    async def main():
        loop = asyncio.get_running_loop()
        sims = [ch.SimCharger(f"CP{i}", f"ws://127.0.0.1:{port}", "1.6" if i % 2 else "2.0.1",
                              meter_interval_s=METER_S, response_timeout_s=60.0) for i in ids]
        for k in range(0, len(sims), 100):  # ramp up 100 at a time, like a site coming back after an outage
            batch = sims[k:k + 100]
            for s in batch:
                s.start()
            await asyncio.gather(*(s.wait_connected(120) for s in batch))
        for k in range(0, len(sims), 100):
            await asyncio.gather(*(s.plug_in(ch.Car(energy_kwh=1000.0)) for s in sims[k:k + 100]))
        pipe.send("ready")
        mark = time.process_time(), time.perf_counter()
        while True:
            cmd = await loop.run_in_executor(None, pipe.recv)
            if cmd == "reset":
                rtt.clear()
                mark = time.process_time(), time.perf_counter()
                pipe.send(True)
            elif cmd == "rtt":
                cpu = 100.0 * (time.process_time() - mark[0]) / (time.perf_counter() - mark[1])
                pipe.send((list(rtt), cpu))
            elif cmd == "applied":
                pipe.send([s.applied_limit_a() for s in sims])
            elif cmd == "stop":
                await asyncio.gather(*(s.stop() for s in sims))
                pipe.send(True)
                return

    asyncio.run(main())


@pytest.mark.parametrize("n", SIZES)
def test_many_chargers(benchmark, n):
    ctx = mp.get_context("spawn")
    port_q, (here, there) = ctx.Queue(), ctx.Pipe()
    server = ctx.Process(target=_server_main, args=(n, port_q, there), daemon=True)
    server.start()
    port = port_q.get(timeout=60)
    k = max(1, min(FLEET_PROCS, n))
    fleets = []
    for j in range(k):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_fleet_main, args=(list(range(1 + j, n + 1, k)), port, b), daemon=True)
        p.start()
        fleets.append((p, a))
    try:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        for _, a in fleets:
            assert a.recv() == "ready"
        ramp_s = time.perf_counter() - t0
        here.send(("running", None))
        assert here.recv() == n
        here.send(("reset", None))
        here.recv()
        for _, a in fleets:
            a.send("reset")
            a.recv()
        time.sleep(WINDOW_S)
        here.send(("stats", None))
        stats = here.recv()
        rtt, cpu = [], []
        for _, a in fleets:
            a.send("rtt")
            r, c = a.recv()
            rtt += r
            cpu.append(c)
        rtt = np.array(rtt) * 1000.0
        stats.update(chargers=n, charger_processes=k, connect_and_plug_in_s=ramp_s,
                     rtt_p50_ms=float(np.percentile(rtt, 50)) if len(rtt) else float("nan"),
                     rtt_p95_ms=float(np.percentile(rtt, 95)) if len(rtt) else float("nan"),
                     meter_messages_per_s=len(rtt) / WINDOW_S,
                     charger_cpu_percent_per_process=float(np.mean(cpu)), loadavg_1min_before=load0)
        pushes = []
        values = iter([16.0, 15.0, 16.0, 15.0, 16.0])

        def push():
            here.send(("push", next(values)))
            res = here.recv()
            assert res["accepted"] == res["sent"] == n
            pushes.append(res["seconds"])

        benchmark.pedantic(push, rounds=3, iterations=1)
        applied = []
        for _, a in fleets:
            a.send("applied")
            applied += a.recv()
        assert len(applied) == n and set(applied) == {16.0}, "every charger applies the last pushed limit"
        stats["push_all_median_s"] = statistics.median(pushes)
        benchmark.extra_info.update(stats)
        print(f"\nn={n}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in stats.items()))
    finally:
        for p, a in fleets:
            a.send("stop")
            a.recv()
            p.join(20)
        here.send(("stop", None))
        here.recv()
        server.join(20)
