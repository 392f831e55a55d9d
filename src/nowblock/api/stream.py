"""The live stream: every state change, encoded once, fanned out to every client.

:class:`StreamHub` reads the central system's event stream (one subscription however many
clients listen), the controller's steps and the operator's inputs, encodes each change once as
JSON and hands it to every client's bounded queue (a slow client loses its oldest messages and
is told how many, it never slows the block). Event names:

``ocpp``
    connect, boot, status, plug_in, unplug, start, needs, stop, disconnect, limit: ``kind``,
    ``charge_point_id``, ``connector_id``, ``session_id``, ``time`` (when the central system
    saw it) and the event's data;
``meter``
    meter values, batched every ``meter_batch_s``: ``items`` with ``session_id``,
    ``current_a`` [A per charger phase], ``power_kw``, ``energy_wh`` (the meter's register),
    ``energy_kwh`` (the session's energy so far), ``soc_percent`` and ``time``;
``step``
    after every control step: :class:`~nowblock.control.status.StepInfo` plus per car the
    setpoint [A] and binding limit, and alarms raised since the last step;
``operator``
    a cap, dimming, resident's needs or service change;
``dropped``
    how many messages this client lost because it read too slowly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic_core import to_json

from nowblock.control.status import step_view

log = logging.getLogger(__name__)


def _plain(v: Any):
    """JSON-able form of an event value (times as ISO 8601, NaN as null)."""
    if isinstance(v, (pd.Timestamp, datetime)):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class Client:
    """One stream reader: a bounded queue of encoded ``(event, data)`` messages."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, msg: tuple[str, str] | None) -> None:
        """Queue a message, dropping the oldest when full."""
        while True:
            try:
                self.queue.put_nowait(msg)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1


class StreamHub:
    """Fan-out of the block's changes to stream clients (see the module docstring).

    Parameters
    ----------
    controller : Controller
        Its central system's live state, its steps and its operator inputs are streamed.
    meter_batch_s : float
        [s] Meter values are sent in one message per this interval.
    client_queue : int
        Messages held per client before the oldest are dropped.
    """

    def __init__(self, controller, *, meter_batch_s: float = 0.25, client_queue: int = 2000) -> None:
        self.controller = controller
        self.meter_batch_s = float(meter_batch_s)
        self.client_queue = int(client_queue)
        self.clients: set[Client] = set()
        self.sent = 0
        self._meter: dict[str, dict] = {}
        self._tasks: list[asyncio.Task] = []
        self._sub = None
        self._alarms_seen = len(controller.alarms)
        self._on_step = self._step_message
        self._on_operator = self._operator_message

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe to the live state and the controller (call on the running loop)."""
        self._sub = self.controller.state.subscribe()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_events(), name="nowblock-api-events"),
                       loop.create_task(self._flush_meter(), name="nowblock-api-meter")]
        self.controller.step_listeners.append(self._on_step)
        self.controller.operator.listeners.append(self._on_operator)

    async def stop(self) -> None:
        """Unsubscribe and end every client's stream."""
        if self._on_step in self.controller.step_listeners:
            self.controller.step_listeners.remove(self._on_step)
        if self._on_operator in self.controller.operator.listeners:
            self.controller.operator.listeners.remove(self._on_operator)
        if self._sub is not None:
            self._sub.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in list(self.clients):
            c.put(None)

    def connect(self) -> Client:
        """A new client (remove it with :meth:`disconnect`)."""
        c = Client(self.client_queue)
        self.clients.add(c)
        return c

    def disconnect(self, client: Client) -> None:
        """Forget a client."""
        self.clients.discard(client)

    # ---- publishing ---------------------------------------------------------------------------
    def publish(self, event: str, data: dict) -> None:
        """Encode ``data`` once and queue it for every client."""
        if not self.clients:
            return
        body = to_json(data, inf_nan_mode="null").decode()
        for c in list(self.clients):
            c.put((event, body))
        self.sent += 1

    async def _read_events(self) -> None:
        async for ev in self._sub:
            try:
                if ev.kind == "meter":
                    d = ev.data
                    sid = f"{ev.cp_id}:{ev.transaction_id}"
                    tx = self.controller.state.transaction(ev.cp_id, ev.transaction_id)
                    self._meter[sid] = {
                        "session_id": sid, "charge_point_id": ev.cp_id, "connector_id": ev.connector_id,
                        "time": pd.Timestamp(ev.time).isoformat(),
                        "current_a": [_plain(d.get(f"current_l{i}_a")) for i in (1, 2, 3)],
                        "power_kw": _plain(d["power_w"] / 1000.0) if "power_w" in d else None,
                        "energy_wh": _plain(d.get("energy_wh")), "soc_percent": _plain(d.get("soc_percent")),
                        # the session's energy (the register minus its start), what the page shows
                        "energy_kwh": None if tx is None else _plain(round(tx.energy_delivered_kwh, 4))}
                    continue
                self.publish("ocpp", {
                    "kind": ev.kind, "charge_point_id": ev.cp_id, "connector_id": ev.connector_id,
                    "session_id": None if ev.transaction_id is None else f"{ev.cp_id}:{ev.transaction_id}",
                    "time": pd.Timestamp(ev.time).isoformat(), "data": _plain(dict(ev.data))})
            except Exception:  # noqa: BLE001 - one odd event must not end the stream
                log.exception("could not stream a %s event", ev.kind)

    async def _flush_meter(self) -> None:
        while True:
            await asyncio.sleep(self.meter_batch_s)
            if self._meter:
                items, self._meter = list(self._meter.values()), {}
                self.publish("meter", {"items": items})

    def _step_message(self, res) -> None:
        info = step_view(res)
        sids = res.current_a.index.tolist()
        setpoints = res.current_a.to_numpy(float).tolist()
        b = res.binding
        if b is not None and len(b):  # column-wise: a .loc per car cost 0.25 ms each
            b = b.reindex(res.current_a.index)
            kinds, limits, rooms = b["binding"].tolist(), b["limit"].tolist(), b["room_a"].to_numpy(float).tolist()
        else:
            kinds = limits = rooms = [None] * len(sids)
        cars = [{"session_id": sid, "setpoint_a": _plain(a), "binding": k if isinstance(k, str) else None,
                 "limit": lim if isinstance(lim, str) else None, "room_a": _plain(r)}
                for sid, a, k, lim, r in zip(sids, setpoints, kinds, limits, rooms)]
        alarms = self.controller.alarms
        new = alarms[self._alarms_seen:] if len(alarms) >= self._alarms_seen else alarms[-10:]
        self._alarms_seen = len(alarms)
        self.publish("step", {"step": _dataclass_json(info), "cars": cars, "alarms_new": [_plain(a) for a in new]})

    def _operator_message(self, what: str, data: dict) -> None:
        self.publish("operator", {"what": what, **_plain(data)})


def _dataclass_json(obj) -> Any:
    return json.loads(to_json(obj, inf_nan_mode="null"))
