"""Robustness at the protocol edge, long runs (issue 13): fuzzing, kill -9, hostile connections.

    pytest benchmarks/bench_fuzz.py -s -p no:cacheprovider                  # 100,000 frames, 20 kills
    NOWBLOCK_FUZZ_FRAMES=10000 NOWBLOCK_CRASH_KILLS=4 pytest benchmarks/bench_fuzz.py -s   # shorter

Every test runs the real ``nowblock serve`` (policy ``equal``, SQLite file) as its own process
on 127.0.0.1 and measures that process (RSS and CPU with psutil). The stations are the raw
frame clients of ``tests/interop`` (written from the specifications, checked against the
official schemas), never the project's own simulators.

- ``test_fuzz_frames``: two client processes (one 1.6, one 2.0.1 station) each fire half of
  ``NOWBLOCK_FUZZ_FRAMES`` hypothesis frames (random seed per run, printed), a valid Heartbeat
  every 100 frames. Reported: frames, CALLs owed an answer, unanswered, InternalError
  answers, reconnects, whether the server process is alive, RSS after the first 5 % of the
  frames (warm: schema validators compiled, caches filled) and at the end.
- ``test_kill_9``: ``NOWBLOCK_CRASH_KILLS`` (20) kills in the middle of meter-value streams,
  half with a 1.6 and half with a 2.0.1 station; acknowledged values lost, energy error,
  transactions that got their TxProfile again after each restart, restart time.
- ``test_strangers_and_oversized``: 500 simultaneous connections with unknown identities and
  five 10 MB frames; time to refuse them against the baseline of one known station's
  handshake, server RSS and CPU before/after.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

import hypothesis  # noqa: F401 - imported up front: its pytest plugin's late import at the summary crashed CPython 3.11's AST check
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from interop.crash import _serve, crash_run, free_port  # noqa: E402
from interop.station import RawStation  # noqa: E402

from nowblock.testing import make_test_site  # noqa: E402

FRAMES = int(os.environ.get("NOWBLOCK_FUZZ_FRAMES", "100000"))
KILLS = int(os.environ.get("NOWBLOCK_CRASH_KILLS", "20"))


def _fuzz_child(url: str, cp_id: str, version: str, n: int, seed: int, progress, out) -> None:
    import logging
    import warnings

    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from interop.fuzz import FuzzClient, Tally, frames

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    tally = Tally()
    client = FuzzClient(url, cp_id, version, tally)
    batch = 10

    @hseed(seed)
    @settings(max_examples=n // batch, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(frames(version), min_size=batch, max_size=batch))
    def fire(fs):
        for f in fs:
            client.send(f)
        with progress.get_lock():
            progress.value += len(fs)
        if tally.frames % 100 < batch:
            client.heartbeat()

    try:
        fire()
        final_heartbeat = client.heartbeat()
    except Exception as exc:  # reported, not hidden
        out.put({"version": version, "error": repr(exc)[:500]})
        return
    out.put({"version": version, "frames": tally.frames, "owed": tally.calls_expecting_answer,
             "unanswered": len(tally.unanswered), "internal": len(tally.internal_errors),
             "internal_examples": [repr(f)[:300] for f, _ in tally.internal_errors[:3]],
             "unanswered_examples": [repr(f)[:300] for f in tally.unanswered[:3]],
             "reconnects": tally.reconnects, "heartbeats_ok": tally.heartbeats_ok, "final_heartbeat": final_heartbeat,
             "by_kind": tally.by_kind, "by_answer": tally.by_answer})


@pytest.mark.benchmark(group="fuzz")
def test_fuzz_frames(benchmark, tmp_path):
    seed = int(os.environ.get("NOWBLOCK_FUZZ_SEED", random.randrange(2**31)))
    result = {}

    def run():
        make_test_site(2).to_toml(tmp_path / "site.toml")
        port = free_port()
        loop = asyncio.new_event_loop()
        proc = loop.run_until_complete(_serve(tmp_path / "site.toml", tmp_path / "nb.sqlite", port, tmp_path))
        server = psutil.Process(proc.pid)
        rss_start = server.memory_info().rss
        ctx = mp.get_context("spawn")
        progress, out = ctx.Value("q", 0), ctx.Queue()
        kids = [ctx.Process(target=_fuzz_child, args=(f"ws://127.0.0.1:{port}", cp, v, FRAMES // 2, seed + i,
                                                      progress, out))
                for i, (cp, v) in enumerate((("CP1", "1.6"), ("CP2", "2.0.1")))]
        t0 = time.monotonic()
        for k in kids:
            k.start()
        rss_warm = None
        samples = []
        while any(k.is_alive() for k in kids) and out.qsize() < 2:
            time.sleep(2.0)
            rss = server.memory_info().rss
            samples.append(rss)
            if rss_warm is None and progress.value >= 0.05 * FRAMES:
                rss_warm = rss
        reports = [out.get(timeout=600) for _ in kids]
        for k in kids:
            k.join(60)
        alive = proc.returncode is None and server.is_running()
        rss_end = server.memory_info().rss
        cpu = server.cpu_times()
        proc.terminate()
        loop.run_until_complete(proc.wait())
        loop.close()
        result.update(seed=seed, reports=reports, alive=alive, seconds=time.monotonic() - t0,
                      rss_start_mb=rss_start / 2**20, rss_warm_mb=(rss_warm or rss_start) / 2**20,
                      rss_end_mb=rss_end / 2**20, rss_max_mb=max(samples or [rss_end]) / 2**20,
                      server_cpu_s=cpu.user + cpu.system)

    benchmark.pedantic(run, rounds=1, iterations=1)
    r = result
    growth = r["rss_end_mb"] / r["rss_warm_mb"] - 1.0
    benchmark.extra_info.update({k: v for k, v in r.items() if k != "reports"}, rss_growth=growth)
    print(f"\nfuzz seed {r['seed']}: {r['seconds']:.0f} s, server alive {r['alive']}, server CPU {r['server_cpu_s']:.0f} s")
    for rep in r["reports"]:
        print("  ", rep)
    print(f"   RSS start {r['rss_start_mb']:.0f} MB, after 5 % {r['rss_warm_mb']:.0f} MB, end {r['rss_end_mb']:.0f} MB "
          f"(max {r['rss_max_mb']:.0f}); growth {growth:+.1%}")
    assert r["alive"]
    for rep in r["reports"]:
        assert "error" not in rep, rep
        assert rep["unanswered"] == 0 and rep["internal"] == 0 and rep["final_heartbeat"], rep
    assert growth < 0.10


@pytest.mark.benchmark(group="crash")
def test_kill_9(benchmark, tmp_path):
    runs = []

    def run():
        for i, version in enumerate(("1.6", "2.0.1")):
            d = tmp_path / version
            d.mkdir()
            runs.append((version, asyncio.run(crash_run(d, kills=KILLS // 2, version=version, seed=i))))

    benchmark.pedantic(run, rounds=1, iterations=1)
    for version, r in runs:
        print(f"\n{version}: kills {r.kills}, acknowledged {len(r.acknowledged)}, lost {len(r.lost)}, in flight "
              f"unanswered {r.in_flight_lost}, stop accepted {r.stop_accepted}, energy stored "
              f"{r.energy_kwh_stored:.3f} of {r.energy_kwh_expected:.3f} kWh, TxProfile again after "
              f"{r.tx_profiles_after_restart}/{r.kills} restarts, restart (kill to connected) median "
              f"{sorted(r.restart_s)[len(r.restart_s) // 2]:.1f} s max {max(r.restart_s):.1f} s")
        assert r.lost == [] and r.stop_accepted
        assert r.energy_kwh_stored == pytest.approx(r.energy_kwh_expected)
    benchmark.extra_info["runs"] = [(v, r.kills, len(r.acknowledged), len(r.lost), r.tx_profiles_after_restart)
                                    for v, r in runs]


@pytest.mark.benchmark(group="hostile")
def test_strangers_and_oversized(benchmark, tmp_path):
    import websockets
    from websockets.asyncio.client import connect

    out = {}

    async def scenario():
        make_test_site(2).to_toml(tmp_path / "site.toml")
        port = free_port()
        proc = await _serve(tmp_path / "site.toml", tmp_path / "nb.sqlite", port, tmp_path)
        server = psutil.Process(proc.pid)
        url = f"ws://127.0.0.1:{port}"
        try:
            t = time.perf_counter()  # baseline: one known station's handshake and boot
            st = await RawStation(url, "CP1", "1.6").connect()
            await st.boot()
            out["known_handshake_boot_ms"] = (time.perf_counter() - t) * 1000
            rss0, cpu0 = server.memory_info().rss, sum(server.cpu_times()[:2])

            async def stranger(i):
                try:
                    async with connect(f"{url}/GHOST{i}", subprotocols=["ocpp1.6"], open_timeout=60):
                        return "accepted"
                except websockets.exceptions.InvalidStatus as exc:
                    return exc.response.status_code

            t = time.perf_counter()
            answers = await asyncio.gather(*(stranger(i) for i in range(500)))
            out["strangers_wall_s"] = time.perf_counter() - t
            out["strangers_refused"] = sum(a == 404 for a in answers)
            out["strangers_server_cpu_ms_each"] = (sum(server.cpu_times()[:2]) - cpu0) / 500 * 1000
            out["rss_after_strangers_mb"] = server.memory_info().rss / 2**20
            t = time.perf_counter()
            closes = []
            for _ in range(5):
                big = await RawStation(url, "CP2", "1.6").connect()
                await big.send_raw('[2,"x","DataTransfer",{"vendorId":"' + "a" * (10 * 2**20) + '"}]')
                await asyncio.wait_for(big.ws.wait_closed(), 30)
                closes.append(big.ws.close_code)
            out["oversized_close_codes"] = closes
            out["oversized_wall_s_each"] = (time.perf_counter() - t) / 5
            await st.heartbeat()  # the known station was served throughout
            out["known_station_still_served"] = True
            out["rss_before_mb"], out["rss_after_mb"] = rss0 / 2**20, server.memory_info().rss / 2**20
            await st.close()
        finally:
            proc.terminate()
            await proc.wait()

    benchmark.pedantic(lambda: asyncio.run(scenario()), rounds=1, iterations=1)
    print("\n", out)
    benchmark.extra_info.update(out)
    assert out["strangers_refused"] == 500 and out["oversized_close_codes"] == [1009] * 5
