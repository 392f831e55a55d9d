"""``kill -9`` of a real ``nowblock serve`` in the middle of a meter-value stream, then a restart.

:func:`crash_run` starts ``nowblock serve`` as its own process on a site file and a SQLite
file, lets a raw-frame station start a transaction and stream meter values, kills the
server with SIGKILL while a MeterValues is in flight, restarts it on the same database and
port, and lets the station carry on with the same transaction; ``kills`` times, then the
station stops the transaction. It returns what the store holds against what the server
acknowledged: every meter value that got a CALLRESULT must be there, and the energy of the
session must be the last register minus the first.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nowblock.store import SqliteStore
from nowblock.testing import make_test_site

from .station import RawStation, meter_16, meter_201, now_iso


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class CrashResult:
    kills: int = 0
    acknowledged: list = field(default_factory=list)  # energy registers [Wh] that got a CALLRESULT
    in_flight_lost: int = 0  # values sent when the server died and never answered (not acknowledged)
    lost: list = field(default_factory=list)  # acknowledged but not in the store
    stop_accepted: bool = False
    energy_kwh_stored: float = float("nan")
    energy_kwh_expected: float = float("nan")
    tx_profiles_after_restart: int = 0  # restarts after which the running transaction got a TxProfile
    restart_s: list = field(default_factory=list)  # kill -> serving again [s]


async def _serve(site: Path, db: Path, port: int, cwd: Path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nowblock.cli", "serve", "--site", str(site), "--port", str(port), "--db", str(db),
        "--policy", "equal", "--period", "2", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert b"serving" in line, line
    return proc


async def _connect(port: int, cp_id: str, version: str) -> RawStation:
    for _ in range(100):
        try:
            return await RawStation(f"ws://127.0.0.1:{port}", cp_id, version).connect()
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError("server did not come back")


def _got_tx_profile(st: RawStation, tx) -> bool:
    for action, p in st.received:
        prof = p.get("csChargingProfiles") or p.get("chargingProfile") or {}
        if action == "SetChargingProfile" and prof.get("chargingProfilePurpose") == "TxProfile" \
                and str(prof.get("transactionId")) == str(tx):
            return True
    return False


async def crash_run(tmp: Path, *, kills: int = 2, version: str = "1.6", seed: int = 0,
                    values_between: tuple[int, int] = (10, 40)) -> CrashResult:
    """Run the scenario above; see :class:`CrashResult`."""
    rng = random.Random(seed)
    site, db, port = tmp / "site.toml", tmp / "nb.sqlite", free_port()
    make_test_site(2).to_toml(site)
    cp_id = "CP1" if version == "1.6" else "CP2"
    res = CrashResult()
    energy = 10_000.0
    proc = await _serve(site, db, port, tmp)
    st = await _connect(port, cp_id, version)
    try:
        await st.boot()
        if version == "1.6":
            await st.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"})
            tx = (await st.ok("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": int(energy),
                                                   "timestamp": now_iso()}))["transactionId"]
        else:
            tx = f"crash-{seed}"
            await st.ok("TransactionEvent", {"eventType": "Started", "timestamp": now_iso(), "seqNo": 0,
                                             "triggerReason": "CablePluggedIn", "transactionInfo": {"transactionId": tx},
                                             "evse": {"id": 1, "connectorId": 1},
                                             "meterValue": meter_201(energy_wh=energy)})
        seq = 1

        def frame(e):
            nonlocal seq
            seq += 1
            if version == "1.6":
                return "MeterValues", meter_16(1, tx, amps=[10.0, 10.0, 10.0], energy_wh=e)
            return "TransactionEvent", {"eventType": "Updated", "timestamp": now_iso(), "seqNo": seq,
                                        "triggerReason": "MeterValuePeriodic", "transactionInfo": {"transactionId": tx},
                                        "meterValue": meter_201(amps=[10.0, 10.0, 10.0], energy_wh=e)}

        for k in range(kills + 1):
            for _ in range(rng.randint(*values_between)):
                energy += 7.0
                await st.ok(*frame(energy))
                res.acknowledged.append(energy)
                await asyncio.sleep(0.005)
            if k == kills:
                break
            # kill -9 while a MeterValues is on the wire: it counts only if its answer arrived
            energy += 7.0
            action, payload = frame(energy)
            pending = asyncio.ensure_future(st.call(action, payload, timeout=3.0))
            await asyncio.sleep(rng.uniform(0.0, 0.004))
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            res.kills += 1
            t_kill = asyncio.get_running_loop().time()
            try:
                answer = await pending
                if answer[0] == 3:
                    res.acknowledged.append(energy)
                else:
                    res.in_flight_lost += 1
            except (asyncio.TimeoutError, Exception):
                res.in_flight_lost += 1
            await st.close()
            proc = await _serve(site, db, port, tmp)
            st = await _connect(port, cp_id, version)
            res.restart_s.append(asyncio.get_running_loop().time() - t_kill)
            await st.boot()
            energy += 7.0  # the station goes on with the same transaction
            await st.ok(*frame(energy))
            res.acknowledged.append(energy)
            try:
                for _ in range(100):
                    if _got_tx_profile(st, tx):
                        res.tx_profiles_after_restart += 1
                        break
                    await asyncio.sleep(0.1)
            except Exception:
                pass
        energy += 7.0
        if version == "1.6":
            await st.ok("StopTransaction", {"transactionId": tx, "meterStop": int(energy), "timestamp": now_iso()})
        else:
            await st.ok("TransactionEvent", {"eventType": "Ended", "timestamp": now_iso(), "seqNo": seq + 1,
                                             "triggerReason": "EVCommunicationLost",
                                             "transactionInfo": {"transactionId": tx, "stoppedReason": "EVDisconnected"},
                                             "meterValue": meter_201(energy_wh=energy)})
        res.stop_accepted = True
    finally:
        await st.close()
        proc.terminate()
        await proc.wait()
    with SqliteStore(db) as store:
        stored = set(store.meter_values(cp_id, tx)["energy_wh"].round(3))
        res.lost = [e for e in res.acknowledged if round(e, 3) not in stored]
        hist = store.sessions_history()
        row = hist[hist["session_id"] == f"{cp_id}:{tx}"] if "session_id" in hist else hist
        res.energy_kwh_stored = float(row["energy_kwh"].iloc[0]) if len(row) else float("nan")
    res.energy_kwh_expected = (energy - 10_000.0) / 1000.0
    return res
