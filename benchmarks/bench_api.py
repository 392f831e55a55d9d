"""HTTP API under load: 2,000 simulated chargers, the state endpoint, the stream, and what the HTTP
side costs the OCPP handlers.

    pytest benchmarks/bench_api.py -s -p no:cacheprovider --benchmark-columns=min,median,max
    NOWBLOCK_BENCH_N=200 NOWBLOCK_BENCH_WINDOW_S=20 pytest benchmarks/bench_api.py -s     # smaller

One server process runs what ``nowblock serve --http-port`` runs: the central system, the
controller (EDF, SQLite store with ``NOWBLOCK_BENCH_SYNC`` = NORMAL; a period of ``NOWBLOCK_BENCH_PERIOD_S`` = 600 s, so that after the
steps of the ramp-up no step falls into a window) and, when switched on, the HTTP API on the
same event loop. A probe task measures the loop's lag (how late a 50 ms sleep wakes). The chargers (half OCPP 1.6J, half 2.0.1, meter values
every 10 s) run in two other processes (benchmarks/bench_ocpp.py's fleet). After every charger is
charging, in ONE run:

1. **HTTP off**: a window of ``WINDOW_S`` seconds measures the OCPP handler latency inside the
   server (frame received to answer sent);
2. **HTTP on**: the API is started (``nowblock serve``'s defaults: a built state is reused for
   1 s); for the same window a client reads ``GET /api/state`` every 0.5 s and another listens
   to ``GET /api/stream``; the handler latency is measured again, and
   the client measures the state endpoint's latency and the stream's delay (the event's time at
   the server to its arrival at the client; same host, same clock);
3. pytest-benchmark times ``GET /api/state`` with the cache off (every request builds the state).

Everything is bounded: fixed counts, fixed windows, loopback only.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from collections import deque

import numpy as np
import pytest

from bench_ocpp import _fleet_main

WINDOW_S = float(os.environ.get("NOWBLOCK_BENCH_WINDOW_S", "60"))
N = int(os.environ.get("NOWBLOCK_BENCH_N", "2000"))
# A long period: after the steps the ramp-up triggers, no control step falls into a window, so
# the windows compare the HTTP side against nothing else (a step at 2,000 cars blocks the loop
# for seconds by itself: measured by NOWBLOCK_BENCH_PERIOD_S=15, see docs/bench_api.md).
PERIOD_S = float(os.environ.get("NOWBLOCK_BENCH_PERIOD_S", "600"))
POLL_S = 0.5
FLEET_PROCS = int(os.environ.get("NOWBLOCK_BENCH_CHARGER_PROCS", "2"))
# SQLite synchronous mode of the store. `nowblock serve` uses FULL (a commit survives a power cut):
# 4.5 ms per meter value here, and 2,000 chargers send 200 a second, so FULL alone saturates the
# event loop (docs/bench_api.md); NORMAL (0.16 ms, survives a process crash) isolates the HTTP side.
SYNC = os.environ.get("NOWBLOCK_BENCH_SYNC", "NORMAL")


def _pct(a, q) -> float:
    return float(np.percentile(np.asarray(a), q)) if len(a) else float("nan")


def _server_main(n: int, port_q, pipe, db_dir: str) -> None:
    import ocpp.messages

    from nowblock.api import BlockApi, TokenCheck
    from nowblock.control import Controller
    from nowblock.store import SqliteStore, attach_store, restore_state
    from nowblock.ocpp.connection import CsmsConnection
    from nowblock.ocpp.server import CentralSystem
    from nowblock.testing import make_test_site

    lat: deque[float] = deque(maxlen=2_000_000)
    original = CsmsConnection._route_call

    async def timed(self, msg):
        t0 = time.perf_counter()
        try:
            await original(self, msg)
        finally:
            lat.append(time.perf_counter() - t0)

    CsmsConnection._route_call = timed
    lag: deque[float] = deque(maxlen=1_000_000)

    async def probe(every_s: float = 0.05):  # how late the loop wakes a sleeper: what everything waits
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(every_s)
            lag.append(time.perf_counter() - t0 - every_s)

    async def main():
        ocpp.messages.ASYNC_VALIDATION = False  # what `nowblock serve` does
        site = make_test_site(n, grid_a=12.0 * n)  # congested: a car gets 12 A on average
        cs = CentralSystem(site, port=0, response_timeout_s=30.0, heartbeat_s=3600, ping_interval_s=None)
        store = SqliteStore(os.path.join(db_dir, "bench.sqlite"), synchronous=SYNC)  # what attach() does,
        restore_state(cs.state, store)                                               # with the sync mode
        attach_store(cs.state, store)
        ctl = Controller(cs, site, "edf", store, period_s=PERIOD_S, min_replan_s=5.0)
        ctl.owns_store = True
        await cs.start()
        await ctl.start()
        api = BlockApi(ctl, tokens=TokenCheck(reads="local"))  # serve's defaults: state reused for 1 s
        port_q.put(cs.port)
        loop = asyncio.get_running_loop()
        prober = loop.create_task(probe())
        mark = (time.perf_counter(), time.process_time())
        while True:
            cmd, arg = await loop.run_in_executor(None, pipe.recv)
            if cmd == "running":
                pipe.send(len(cs.state.running()))
            elif cmd == "reset":
                lat.clear()
                lag.clear()
                mark = (time.perf_counter(), time.process_time())
                pipe.send(True)
            elif cmd == "stats":
                wall, cpu = time.perf_counter() - mark[0], time.process_time() - mark[1]
                a = np.array(lat) * 1000.0
                steps = [sum(r.seconds.values()) for r in ctl.history if r.time.timestamp() > time.time() - wall]
                pipe.send({"messages": len(a), "cpu_percent": 100.0 * cpu / wall, "wall_s": wall,
                           **{f"handler_p{q}_ms": _pct(a, q) for q in (50, 95, 99)},
                           "handler_max_ms": float(a.max()) if len(a) else float("nan"),
                           **{f"loop_lag_p{q}_ms": _pct(np.array(lag) * 1000.0, q) for q in (50, 99)},
                           "loop_lag_max_ms": 1000.0 * max(lag, default=float("nan")),
                           "steps": len(steps), "step_median_s": statistics.median(steps) if steps else float("nan")})
            elif cmd == "steps":
                pipe.send(len(ctl.history))
            elif cmd == "ttl":
                api.state_ttl_s = float(arg)
                pipe.send(True)
            elif cmd == "api_on":
                await api.start(port=0)
                pipe.send(api.port)
            elif cmd == "stop":
                prober.cancel()
                await api.stop()
                await ctl.stop()
                await cs.stop()
                pipe.send(True)
                return

    asyncio.run(main())


def _poll_state(base: str, until: float, out: list, sizes: list) -> None:
    import httpx

    with httpx.Client(base_url=base, timeout=120) as h:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            r = h.get("/api/state")
            out.append(time.perf_counter() - t0)
            sizes.append(len(r.content))
            assert r.status_code == 200
            time.sleep(max(0.0, POLL_S - (time.perf_counter() - t0)))


def _listen(base: str, until: float, meter: list, ocpp_events: list, counts: dict) -> None:
    import httpx
    import pandas as pd

    with httpx.Client(base_url=base, timeout=httpx.Timeout(30, read=60)) as h:
        with h.stream("GET", "/api/stream") as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event:
                    now = time.time()
                    d = json.loads(line[5:])
                    counts[event] = counts.get(event, 0) + 1
                    if event == "meter":
                        meter.extend(now - pd.Timestamp(i["time"]).timestamp() for i in d["items"])
                    elif event == "ocpp":
                        ocpp_events.append(now - pd.Timestamp(d["time"]).timestamp())
                if time.monotonic() > until:
                    return


def test_api_under_2000_chargers(benchmark):
    ctx = mp.get_context("spawn")
    port_q, (here, there) = ctx.Queue(), ctx.Pipe()
    db_dir = tempfile.mkdtemp(prefix="nowblock-bench-api-")
    server = ctx.Process(target=_server_main, args=(N, port_q, there, db_dir), daemon=True)
    server.start()
    port = port_q.get(timeout=120)
    k = max(1, min(FLEET_PROCS, N))
    fleets = []
    for j in range(k):
        a, b = ctx.Pipe()
        p = ctx.Process(target=_fleet_main, args=(list(range(1 + j, N + 1, k)), port, b), daemon=True)
        p.start()
        fleets.append((p, a))
    try:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        for _, a in fleets:
            assert a.recv() == "ready"
        ramp_s = time.perf_counter() - t0
        here.send(("running", None))
        assert here.recv() == N
        # Let the steps the ramp-up triggered pass: until no new step for 20 s (at most 5 min).
        end, last, since = time.monotonic() + 300, -1, time.monotonic()
        while time.monotonic() < end and time.monotonic() - since < 20:
            here.send(("steps", None))
            k = here.recv()
            if k != last:
                last, since = k, time.monotonic()
            time.sleep(2)

        # 1. HTTP off
        here.send(("reset", None))
        here.recv()
        time.sleep(WINDOW_S)
        here.send(("stats", None))
        off = here.recv()

        # 2. HTTP on: a state poller and a stream listener for the same window
        here.send(("api_on", None))
        base = f"http://127.0.0.1:{here.recv()}"
        here.send(("reset", None))
        here.recv()
        until = time.monotonic() + WINDOW_S
        state_s, sizes, meter_s, ocpp_s, counts = [], [], [], [], {}
        threads = [threading.Thread(target=_poll_state, args=(base, until, state_s, sizes)),
                   threading.Thread(target=_listen, args=(base, until, meter_s, ocpp_s, counts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WINDOW_S + 120)
        here.send(("stats", None))
        on = here.recv()

        # 3. pytest-benchmark: GET /api/state, the state built anew every time
        import httpx

        here.send(("ttl", 0.0))
        here.recv()
        with httpx.Client(base_url=base, timeout=120) as h:
            benchmark.pedantic(lambda: h.get("/api/state").raise_for_status(), rounds=10, iterations=1)

        ms = lambda a: np.array(a) * 1000.0  # noqa: E731
        stats = {
            "chargers": N, "store_synchronous": SYNC, "connect_and_plug_in_s": ramp_s, "loadavg_1min_before": load0,
            "handler_off_p50_p95_p99_max_ms": [off[f"handler_p{q}_ms"] for q in (50, 95, 99)] + [off["handler_max_ms"]],
            "handler_on_p50_p95_p99_max_ms": [on[f"handler_p{q}_ms"] for q in (50, 95, 99)] + [on["handler_max_ms"]],
            "handler_p50_ratio_on_off": on["handler_p50_ms"] / off["handler_p50_ms"],
            "handler_p99_ratio_on_off": on["handler_p99_ms"] / off["handler_p99_ms"],
            "loop_lag_off_p50_p99_max_ms": [off["loop_lag_p50_ms"], off["loop_lag_p99_ms"], off["loop_lag_max_ms"]],
            "loop_lag_on_p50_p99_max_ms": [on["loop_lag_p50_ms"], on["loop_lag_p99_ms"], on["loop_lag_max_ms"]],
            "ocpp_messages_off_on": [off["messages"], on["messages"]],
            "server_cpu_percent_off_on": [off["cpu_percent"], on["cpu_percent"]],
            "steps_off_on": [off["steps"], on["steps"]], "step_median_s_off_on": [off["step_median_s"], on["step_median_s"]],
            "state_requests": len(state_s), "state_p50_ms": _pct(ms(state_s), 50), "state_p99_ms": _pct(ms(state_s), 99),
            "state_max_ms": float(ms(state_s).max()) if state_s else float("nan"),
            "state_bytes_median": statistics.median(sizes) if sizes else 0,
            "stream_events": counts,
            "stream_meter_delay_p50_p99_ms": [_pct(ms(meter_s), 50), _pct(ms(meter_s), 99)],
            "stream_ocpp_delay_p50_p99_ms": [_pct(ms(ocpp_s), 50), _pct(ms(ocpp_s), 99)],
            "meter_items_streamed": len(meter_s),
        }
        benchmark.extra_info.update(stats)
        print("\n" + "\n".join(f"{k}: {v}" for k, v in stats.items()), flush=True)
        assert len(state_s) > 0 and len(meter_s) > 0
    finally:
        for p, a in fleets:
            a.send("stop")
            a.recv()
            p.join(20)
        here.send(("stop", None))
        here.recv()
        server.join(20)
