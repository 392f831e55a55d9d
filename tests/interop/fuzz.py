"""A hypothesis fuzzer of OCPP-J frames (1.6 and 2.0.1) and a synchronous raw client to fire them.

Frames are built from the official JSON schemas (``hypothesis-jsonschema``): valid CALLs of
every message a station sends to a central system, the same payloads mutated (a required
field dropped, a value of another type, an unknown field, a timestamp out of any plausible
range), CALLs of unknown or central-system-side actions, broken frame shapes (wrong message
type, id of another type, missing parts), answers to nothing, garbage text, bytes, and
nesting up to 5,000 deep. Each frame says whether the protocol obliges an answer (a CALL
with a readable message id). :class:`FuzzClient` sends frames one by one and checks that
every such CALL gets a CALLRESULT or CALLERROR (not InternalError) within a timeout.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .station import SCHEMA_DIRS, actions

# Messages a station sends to the central system, as the specifications list them.
STATION_ACTIONS = {
    "1.6": ["Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
            "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification",
            "StopTransaction"],
    "2.0.1": ["Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer", "FirmwareStatusNotification",
              "Heartbeat", "LogStatusNotification", "MeterValues", "NotifyChargingLimit", "NotifyEVChargingNeeds",
              "NotifyEvent", "NotifyReport", "ReportChargingProfiles", "SecurityEventNotification",
              "StatusNotification", "TransactionEvent"],
}
_ids = iter(range(10**12))


@lru_cache(maxsize=None)
def _plain_schema(version: str, action: str) -> dict:
    suffix = "" if version == "1.6" else "Request"
    with open(os.path.join(SCHEMA_DIRS[version], f"{action}{suffix}.json"), encoding="utf-8-sig") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def payloads(version: str, action: str):
    """Schema-valid payloads of ``action`` (an empty object when the schema cannot be generated from)."""
    try:
        return from_schema(_plain_schema(version, action))
    except Exception:
        return st.just({})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
bad_times = st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "yesterday",
                             "2026-13-45T25:61:61Z", "", "2262-04-12T00:00:00Z", "1677-09-21T00:00:00+14:00"])


@dataclass(frozen=True)
class Frame:
    """One frame to send: ``data`` (str or bytes), ``uid`` of a CALL that must be answered (or None)."""

    data: str | bytes
    uid: str | None
    kind: str


def _uid() -> str:
    return f"f{next(_ids)}"


def _call(action, payload, kind) -> Frame:
    uid = _uid()
    return Frame(json.dumps([2, uid, action, payload], default=float), uid, kind)


def _mutate(payload: dict, how: int, value, tm: str) -> dict:
    p = dict(payload)
    keys = sorted(p)
    if how == 0 and keys:  # drop a field
        p.pop(keys[len(keys) // 2])
    elif how == 1 and keys:  # a value of another type
        p[keys[-1]] = value
    elif how == 2:  # an unknown field
        p["unknownField"] = value
    else:  # timestamps anywhere in the payload replaced by implausible or broken ones
        p = json.loads(json.dumps(p, default=float), object_hook=lambda d: {k: (tm if "ime" in k or k in (
            "timestamp", "generatedAt") else v) for k, v in d.items()})
    return p


def frames(version: str) -> st.SearchStrategy[Frame]:
    """Every kind of frame, weighted towards (mutated) calls of the messages stations send."""
    acts = STATION_ACTIONS[version]
    valid = st.sampled_from(acts).flatmap(lambda a: payloads(version, a).map(lambda p: _call(a, p, "valid")))
    mutated = st.builds(
        lambda a, p, how, v, tm: _call(a, _mutate(p, how, v, tm), "mutated"),
        st.shared(st.sampled_from(acts), key=f"a{version}"),
        st.shared(st.sampled_from(acts), key=f"a{version}").flatmap(lambda a: payloads(version, a)),
        st.integers(0, 3), json_values, bad_times)
    other_action = st.builds(lambda a, p: _call(a, p, "action"),
                             st.sampled_from(actions(version)) | st.text(max_size=30), json_values.filter(
                                 lambda v: isinstance(v, dict)) | st.just({}))
    shape = st.builds(
        lambda t, uid, rest: Frame(json.dumps([t, uid, *rest]), uid if t == 2 and isinstance(uid, str) and uid
                                   else None, "shape"),
        st.sampled_from([2, 2, 3, 4, 5, 0, -1, True, "2", 2.0]),
        st.one_of(st.builds(_uid), st.integers(), st.none(), st.just("")),
        st.lists(json_values, max_size=5))
    stray = st.builds(lambda v: Frame(json.dumps([3, _uid(), v if isinstance(v, dict) else {}]), None, "stray"),
                      json_values) | st.builds(lambda c: Frame(json.dumps([4, _uid(), c, "x", {}]), None, "stray"),
                                               st.text(max_size=20))
    garbage = (st.text(max_size=200).map(lambda s: Frame(s, None, "garbage"))
               | st.binary(max_size=200).map(lambda b: Frame(b, None, "garbage"))
               | json_values.map(lambda v: Frame(json.dumps(v), None, "garbage")))
    truncated = st.builds(lambda a, cut: _truncated(a, cut), st.sampled_from(acts), st.integers(1, 30))
    deep = st.builds(lambda d, a: _deep(d, a), st.integers(1, 5000), st.sampled_from(acts))
    return st.one_of(valid, valid, mutated, mutated, mutated, other_action, shape, stray, garbage, truncated, deep)


def _truncated(action: str, cut: int) -> Frame:
    uid = _uid()
    text = json.dumps([2, uid, action, {"a": [1, 2, 3], "b": "text"}])
    return Frame(text[: len(text) - cut], uid, "truncated")  # the id is still readable at its head


def _deep(depth: int, action: str) -> Frame:
    uid = _uid()
    return Frame(f'[2,"{uid}","{action}",{{"x":' + "[" * depth + "]" * depth + "}]", uid, "deep")


@dataclass
class Tally:
    """What a fuzz run saw."""

    frames: int = 0
    calls_expecting_answer: int = 0
    unanswered: list = field(default_factory=list)
    internal_errors: list = field(default_factory=list)
    reconnects: int = 0
    heartbeats_ok: int = 0
    by_kind: dict = field(default_factory=dict)
    by_answer: dict = field(default_factory=dict)


class FuzzClient:
    """A synchronous raw station: sends a frame, waits for the answer a CALL is owed.

    Calls of the central system are answered with CALLERROR NotImplemented (a station that
    implements nothing optional). A connection the server closes is reopened and counted.
    """

    def __init__(self, url: str, cp_id: str, version: str, tally: Tally, timeout_s: float = 10.0) -> None:
        self.url, self.cp_id, self.version, self.tally, self.timeout_s = url, cp_id, version, tally, timeout_s
        self.ws = None
        self._connect()

    def _connect(self) -> None:
        proto = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        self.ws = connect(f"{self.url}/{self.cp_id}", subprotocols=[proto], open_timeout=20, max_size=None,
                          close_timeout=1).__enter__()

    def close(self) -> None:
        self.ws.close()

    def send(self, frame: Frame) -> None:
        """Send ``frame``; if it is a CALL owed an answer, wait for it and tally it."""
        t = self.tally
        t.frames += 1
        t.by_kind[frame.kind] = t.by_kind.get(frame.kind, 0) + 1
        try:
            self.ws.send(frame.data)
            if frame.uid is not None:
                t.calls_expecting_answer += 1
                ans = self._await(frame.uid)
                if ans is None:
                    t.unanswered.append(frame)
                else:
                    code = "CALLRESULT" if ans[0] == 3 else ans[2]
                    t.by_answer[code] = t.by_answer.get(code, 0) + 1
                    if code == "InternalError":
                        t.internal_errors.append((frame, ans))
        except ConnectionClosed:
            t.reconnects += 1
            if frame.uid is not None:
                t.unanswered.append(frame)
            self._connect()

    def heartbeat(self) -> bool:
        """A valid Heartbeat must get its CALLRESULT."""
        uid = _uid()
        try:
            self.ws.send(json.dumps([2, uid, "Heartbeat", {}]))
            ans = self._await(uid)
        except ConnectionClosed:
            self.tally.reconnects += 1
            self._connect()
            return False
        ok = ans is not None and ans[0] == 3 and "currentTime" in ans[2]
        self.tally.heartbeats_ok += ok
        return ok

    def _await(self, uid: str):
        end = time.monotonic() + self.timeout_s
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                return None
            try:
                msg = json.loads(raw, parse_float=Decimal)
            except ValueError:
                continue
            if not isinstance(msg, list) or len(msg) < 2:
                continue
            if msg[0] == 2:  # the central system asks something: not implemented here
                self.ws.send(json.dumps([4, msg[1], "NotImplemented", "", {}]))
            elif msg[1] == uid:
                return msg
