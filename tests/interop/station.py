"""A charging station written from the OCPP-J specification: raw JSON frames over ``websockets``.

It shares nothing with the central system under test but the official JSON schemas (read
from the files the ``ocpp`` package ships): every frame it sends is checked against the
request schema of its action (unless sent raw on purpose), and every CALL the central system
sends it, and the answer to each of its own CALLs, is checked against the official schema;
violations are collected in ``schema_errors`` for the test to assert on.

Answers to the central system's CALLs come from ``answer(action, payload)``, a callable the
test gives: return a payload dict (CALLRESULT), ``Err("NotImplemented")`` (CALLERROR),
``Silence()`` (no answer at all) or ``Late(seconds, payload, twice=False)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache

import jsonschema
import ocpp
from websockets.asyncio.client import connect

SCHEMA_DIRS = {"1.6": os.path.join(os.path.dirname(ocpp.__file__), "v16", "schemas"),
               "2.0.1": os.path.join(os.path.dirname(ocpp.__file__), "v201", "schemas")}
CALL, RESULT, ERROR = 2, 3, 4


@lru_cache(maxsize=None)
def schema(version: str, action: str, response: bool = False) -> dict:
    """The official JSON schema of ``action`` (request, or its response)."""
    suffix = "Response" if response else ("Request" if version != "1.6" else "")
    with open(os.path.join(SCHEMA_DIRS[version], f"{action}{suffix}.json"), encoding="utf-8-sig") as f:
        return json.loads(f.read(), parse_float=Decimal)


@lru_cache(maxsize=None)
def validator(version: str, action: str, response: bool = False):
    s = schema(version, action, response)
    return jsonschema.validators.validator_for(s)(s)


def actions(version: str) -> list[str]:
    """Request actions with an official schema (both directions)."""
    names = sorted(f[:-5] for f in os.listdir(SCHEMA_DIRS[version]) if f.endswith(".json"))
    if version == "1.6":
        return [n for n in names if not n.endswith("Response")]
    return [n[:-7] for n in names if n.endswith("Request")]


def schema_problems(version: str, action: str, payload, response: bool = False) -> list[str]:
    """Messages of every violation of the official schema (empty: valid)."""
    try:
        v = validator(version, action, response)
    except FileNotFoundError:
        return [f"no schema for {action}"]
    return [e.message for e in v.iter_errors(payload)]


def now_iso(t: datetime | None = None) -> str:
    """RFC 3339 UTC with 'Z'."""
    return (t or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Err:
    code: str
    description: str = ""


@dataclass
class Silence:
    pass


@dataclass
class Late:
    delay_s: float
    payload: dict
    twice: bool = False


@dataclass
class RawStation:
    """One station identity on one WebSocket (``connect()`` again for a new one)."""

    url: str  # ws://127.0.0.1:PORT
    cp_id: str
    version: str = "1.6"
    answer: object = None  # callable(action, payload) -> dict | Err | Silence | Late
    received: list = field(default_factory=list)  # (action, payload) of the central system's CALLs
    received_at: list = field(default_factory=list)  # time.monotonic() of each, in the same order
    schema_errors: list = field(default_factory=list)
    stray: list = field(default_factory=list)  # frames that matched nothing we sent

    def __post_init__(self) -> None:
        self.ws = None
        self._pending: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # ---- connection ------------------------------------------------------------------------
    async def connect(self, **kw) -> "RawStation":
        proto = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        self.ws = await connect(f"{self.url}/{self.cp_id}", subprotocols=[proto], open_timeout=10,
                                ping_interval=None, max_size=None, **kw)
        self._reader = asyncio.get_running_loop().create_task(self._read(self.ws))
        return self

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None and self.ws.close_code is None:
            await self.ws.close()

    def abandon(self) -> None:
        """Stop reading and answering without closing: the socket stays half open, as when a
        station loses its network and comes back on a new connection."""
        if self._reader is not None:
            self._reader.cancel()
        self._reader = None

    async def _read(self, ws) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw, parse_float=Decimal)
            except ValueError:
                self.stray.append(raw)
                continue
            if msg[0] == CALL:
                self._spawn(self._on_call(ws, msg))
            elif msg[0] in (RESULT, ERROR):
                fut = self._pending.pop(msg[1], None)
                if fut is None or fut.done():
                    self.stray.append(msg)
                else:
                    fut.set_result(msg)

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _on_call(self, ws, msg) -> None:
        _, uid, action, payload = msg
        self.received.append((action, payload))
        self.received_at.append(time.monotonic())
        for p in schema_problems(self.version, action, payload):
            self.schema_errors.append(f"central system's {action}: {p}")
        reply = self.answer(action, payload) if self.answer else default_answer(self.version, action, payload)
        frames = []
        if isinstance(reply, Silence):
            return
        if isinstance(reply, Late):
            await asyncio.sleep(reply.delay_s)
            frames = [[RESULT, uid, reply.payload]] * (2 if reply.twice else 1)
        elif isinstance(reply, Err):
            frames = [[ERROR, uid, reply.code, reply.description, {}]]
        else:
            frames = [[RESULT, uid, reply]]
        for f in frames:
            await ws.send(json.dumps(f, default=_num))

    # ---- sending ---------------------------------------------------------------------------
    async def send_raw(self, text: str | bytes) -> None:
        """Send a frame as is (no checks)."""
        await self.ws.send(text)

    async def call(self, action: str, payload: dict, *, timeout: float = 10.0, check: bool = True,
                   uid: str | None = None) -> list:
        """Send a CALL (checked against the official schema unless ``check`` is False) and
        return the answer frame ``[3, id, payload]`` or ``[4, id, code, description, details]``."""
        if check:
            problems = schema_problems(self.version, action, payload)
            assert not problems, f"test bug: {action} {problems}"
        uid = uid or str(uuid.uuid4())
        fut = asyncio.get_running_loop().create_future()
        self._pending[uid] = fut
        await self.ws.send(json.dumps([CALL, uid, action, payload], default=_num))
        try:
            answer = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(uid, None)
        if answer[0] == RESULT:
            for p in schema_problems(self.version, action, answer[2], response=True):
                self.schema_errors.append(f"answer to {action}: {p}")
        return answer

    async def ok(self, action: str, payload: dict, **kw) -> dict:
        """:meth:`call` that must be answered with a CALLRESULT; returns its payload."""
        answer = await self.call(action, payload, **kw)
        assert answer[0] == RESULT, f"{action} answered {answer}"
        return answer[2]

    # ---- common flows ----------------------------------------------------------------------
    async def boot(self, **fields) -> dict:
        if self.version == "1.6":
            payload = {"chargePointVendor": "Interop", "chargePointModel": "Raw16", **fields}
        else:
            payload = {"reason": "PowerUp", "chargingStation": {"vendorName": "Interop", "model": "Raw201", **fields}}
        return await self.ok("BootNotification", payload)

    async def heartbeat(self) -> dict:
        return await self.ok("Heartbeat", {})

    async def start_tx(self, when: str | None = None, *, meter_start_wh: int = 10000, tx_id: str = "T1"):
        """Start a transaction on connector 1 stamped ``when`` (now): a 1.6 StartTransaction (the
        id is the central system's), a 2.0.1 TransactionEvent Started ``tx_id`` with the register
        at ``meter_start_wh`` [Wh]. Returns the transaction id."""
        when = when or now_iso()
        if self.version == "1.6":
            return (await self.ok("StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": meter_start_wh,
                                                       "timestamp": when}))["transactionId"]
        await self.ok("TransactionEvent", {"eventType": "Started", "timestamp": when, "seqNo": 0,
                                           "triggerReason": "CablePluggedIn",
                                           "transactionInfo": {"transactionId": tx_id},
                                           "evse": {"id": 1, "connectorId": 1},
                                           "meterValue": meter_201(energy_wh=float(meter_start_wh), when=when)})
        return tx_id

    async def reading(self, tx, seq: int, *, amps, energy_wh: float, when: str | None = None) -> dict:
        """Send one periodic reading of transaction ``tx`` on connector 1: phase currents ``amps``
        [A] and the register ``energy_wh`` [Wh], stamped ``when`` (now); 2.0.1 numbers the event
        ``seq``."""
        if self.version == "1.6":
            return await self.ok("MeterValues", meter_16(1, tx, amps=amps, energy_wh=energy_wh, when=when))
        return await self.ok("TransactionEvent", {"eventType": "Updated", "timestamp": when or now_iso(), "seqNo": seq,
                                                  "triggerReason": "MeterValuePeriodic",
                                                  "transactionInfo": {"transactionId": tx},
                                                  "meterValue": meter_201(amps=amps, energy_wh=energy_wh, when=when)})


def _num(x):
    if isinstance(x, Decimal):
        return float(x)
    raise TypeError(f"{type(x).__name__} is not JSON")


def default_answer(version: str, action: str, payload: dict):
    """A plain station: accepts profiles and clears, does not implement the rest."""
    if action in ("SetChargingProfile", "ClearChargingProfile"):
        return {"status": "Accepted"}
    return Err("NotImplemented", f"{action} not implemented")


# ---- frame builders (OCPP 1.6J) ----------------------------------------------------------------
def meter_16(connector_id: int, tx: int | None, *, amps=None, energy_wh=None, power_w=None, when=None,
             as_strings_only: bool = True, phases: bool = True) -> dict:
    """A 1.6 MeterValues payload (sampled values are strings, as the 1.6 schema says)."""
    sv = []
    if energy_wh is not None:
        sv.append({"value": f"{energy_wh:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"})
    if power_w is not None:
        sv.append({"value": f"{power_w:.0f}", "measurand": "Power.Active.Import", "unit": "W"})
    for i, a in enumerate(amps or []):
        v = {"value": f"{a:.1f}", "measurand": "Current.Import", "unit": "A"}
        if phases:
            v["phase"] = f"L{i + 1}"
        sv.append(v)
    p = {"connectorId": connector_id, "meterValue": [{"timestamp": when or now_iso(), "sampledValue": sv}]}
    if tx is not None:
        p["transactionId"] = tx
    return p


def meter_201(*, amps=None, energy_wh=None, power_w=None, when=None) -> list:
    """A 2.0.1 meterValue list (numbers, unitOfMeasure objects)."""
    sv = []
    if energy_wh is not None:
        sv.append({"value": energy_wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}})
    if power_w is not None:
        sv.append({"value": power_w, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}})
    for i, a in enumerate(amps or []):
        sv.append({"value": a, "measurand": "Current.Import", "phase": f"L{i + 1}", "unitOfMeasure": {"unit": "A"}})
    return [{"timestamp": when or now_iso(), "sampledValue": sv}]


def limit_of(profile: dict) -> float:
    """The first period's limit of a received charging profile (1.6 or 2.0.1, camelCase)."""
    sched = profile["chargingSchedule"]
    sched = sched[0] if isinstance(sched, list) else sched
    return float(sched["chargingSchedulePeriod"][0]["limit"])
