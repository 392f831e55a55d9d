"""``nowblock serve`` as a user runs it: a separate process, a site file, a charger connecting."""

import asyncio
import socket
import sys

import pytest
import websockets
from websockets.asyncio.client import connect

from nowblock.ocpp import profiles as pr
from nowblock.testing import eventually, make_test_site
from nowblock.sim.chargers import Car, SimCharger


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_refuses_strangers_and_limits_a_new_transaction_within_5_s(tmp_path):
    site = make_test_site(2, grid_a=40)
    site.to_toml(tmp_path / "site.toml")
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nowblock.cli", "serve", "--site", str(tmp_path / "site.toml"), "--port", str(port),
        "--db", str(tmp_path / "nb.sqlite"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path)
    try:
        # Waits for the event (the "serving" line); the bound only catches a hang (a first start compiles).
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        assert b"serving" in line, line
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with connect(f"ws://127.0.0.1:{port}/INTRUDER", subprotocols=["ocpp1.6"]):
                pass
        sim = SimCharger("CP1", f"ws://127.0.0.1:{port}", "1.6")
        sim.start()
        try:
            await sim.wait_connected()
            loop = asyncio.get_running_loop()
            tx = await sim.plug_in(Car())
            t0 = loop.time()
            await eventually(lambda: any(p.purpose == pr.TX and p.transaction_id == tx for p in sim.profiles),
                             timeout_s=5.0)
            assert loop.time() - t0 < 5.0
            assert sim.applied_limit_a() <= 32.0
        finally:
            await sim.stop()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
        assert proc.returncode == 0  # SIGTERM is a clean stop
        out = (await proc.stdout.read()).decode()
        assert "stopped on SIGTERM" in out and "goodbye" in out, out
        # At the default log level serve shows its control steps (one INFO line a step).
        err = (await proc.stderr.read()).decode()
        assert "INFO nowblock.control.controller: step " in err, err[-2000:]
