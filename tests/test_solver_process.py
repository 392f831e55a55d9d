"""The solver's worker process ends with the server that started it, even one killed with
SIGKILL (no clean-up runs): every ``kill -9`` of a ``nowblock serve`` in the crash tests left
its worker and that worker's resource tracker running (two per CI run, 280 MB each, seen in
session 38 and 39), as it would on an operator's machine after each crash and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

_SERVER = textwrap.dedent("""
    import sys, time
    from nowblock.control.solver import SolverProcess
    p = SolverProcess("equal")
    p.warm_up()
    print(*[w.pid for w in p._pool._processes.values()], flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent (init here) has not reaped it yet.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_worker_ends_when_its_server_is_killed_with_sigkill():
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(server.stdout.readline().split()[0])
        assert _alive(worker)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        deadline = time.monotonic() + 20.0
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), f"worker {worker} outlived its server killed with SIGKILL"
    finally:
        server.kill()
        server.wait(timeout=10)
        server.stdout.close()

