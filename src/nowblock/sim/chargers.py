"""Simulated OCPP 1.6J and 2.0.1 charging stations that talk to a central system over WebSockets.

A :class:`SimCharger` is the station (meter, connectors, the profiles it holds, the car
plugged in); a thin protocol client per version (built on the ``ocpp`` library's
charge-point side) carries its messages. Stations boot, report status, authorize, start
transactions, send meter values every ``meter_interval_s``, stop; they obey received charging
profiles by OCPP stacking rules (:mod:`nowblock.ocpp.profiles`) and expose what they applied
(:meth:`SimCharger.applied_limit_a`, :meth:`SimCharger.draw_a`).

Quirks (:class:`Quirks`) reproduce chargers found in the field: rejecting TxProfiles,
answering NotSupported, cars drawing less than offered, dropped connections that come back,
single-phase cars (``Car(phases=1)``), no answer at all.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import math
import random
import ssl as _ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as _CP16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as res16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as _CP201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as res201
from ocpp.v201.enums import Action as A201
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.profiles import iso, utcnow

log = logging.getLogger(__name__)

#: Measurands the simulated meter can sample (1.6 MeterValuesSampledData, 2.0.1
#: SampledDataCtrlr.TxUpdatedMeasurands); a station samples all of them unless told otherwise.
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Offered", "Current.Import", "SoC")


@dataclass
class Quirks:
    """Misbehaviour to simulate.

    ``reject_tx_profile``: SetChargingProfile with a TxProfile answered Rejected.
    ``not_supported``: no smart charging (1.6: status NotSupported; 2.0.1: CALLERROR NotSupported).
    ``silent_profiles``: SetChargingProfile never answered (the central system times out).
    ``draw_fraction``: the car draws this share of what it is offered.
    ``drop_every_s``: drop the connection after this long connected, reconnect after ``reconnect_delay_s``.
    ``rate_unit``: 'A' or 'W', what the charger reports it accepts.
    """

    reject_tx_profile: bool = False
    not_supported: bool = False
    silent_profiles: bool = False
    draw_fraction: float = 1.0
    drop_every_s: float | None = None
    reconnect_delay_s: float = 0.2
    rate_unit: str = "A"


@dataclass
class Car:
    """The car plugged in: ``phases`` it charges on, ``max_current_a`` [A], ``energy_kwh`` it wants,
    ``departure`` (reported by 2.0.1 stations with NotifyEVChargingNeeds), ``battery_kwh``/``soc_percent``."""

    phases: int = 3
    max_current_a: float = 32.0
    energy_kwh: float = 20.0
    departure: datetime | None = None
    battery_kwh: float = 60.0
    soc_percent: float = 30.0
    min_current_a: float = 6.0


@dataclass
class Session:
    """A transaction on one connector."""

    connector_id: int
    car: Car
    id_tag: str
    transaction_id: str | None = None
    start: datetime = field(default_factory=utcnow)
    meter_start_wh: float = 0.0
    delivered_wh: float = 0.0
    seq_no: int = 0
    ended: bool = False  # the stop was reported: the car draws nothing more


class SimCharger:
    """A simulated charging station ``cp_id`` connecting to ``url`` (base ``ws://host:port``).

    ``version`` "1.6" or "2.0.1"; ``max_current_a`` [A] and ``phases`` of the charger;
    ``meter_interval_s`` [s]; ``password`` for HTTP Basic (security profile 1); ``clock``
    returns the current time (replace it to run faster than real time); ``measurands`` it
    samples in its periodic meter values (a subset of :data:`MEASURANDS`; the central system
    may change them, as it may a real station's).
    """

    def __init__(
        self, cp_id: str, url: str, version: str = "1.6", *, connectors: int = 1, max_current_a: float = 32.0,
        phases: int = 3, voltage_v: float = 230.0, meter_interval_s: float = 10.0, password: str | None = None,
        quirks: Quirks | None = None, clock: Callable[[], datetime] = utcnow, ssl: _ssl.SSLContext | None = None,
        response_timeout_s: float = 10.0, measurands: Sequence[str] = MEASURANDS,
    ) -> None:
        self.cp_id, self.url, self.version = cp_id, url.rstrip("/"), version
        self.n_connectors, self.max_current_a, self.phases = connectors, max_current_a, phases
        self.voltage_v, self.meter_interval_s = voltage_v, meter_interval_s
        self.password, self.quirks, self.clock, self.ssl = password, quirks or Quirks(), clock, ssl
        self.response_timeout_s = response_timeout_s
        self.measurands: list[str] = []
        if not self.configure_measurands(",".join(measurands)):
            raise ValueError(f"measurands: a non-empty subset of {MEASURANDS}, got {list(measurands)}")
        self.profiles: list[pr.Profile] = []
        self.sessions: dict[int, Session] = {}
        self.register_wh: dict[int, float] = {c: 0.0 for c in range(1, connectors + 1)}
        self.client: _Client16 | _Client201 | None = None
        self.connected = asyncio.Event()
        self.booted = False
        self.last_error: Exception | None = None
        self.connections = 0
        self.received: list[tuple[str, dict]] = []  # (action, payload) of CALLs from the central system
        self._last_advance: datetime | None = None
        self._stopping = False
        self._drop_now = asyncio.Event()
        self._reconnect_now = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._tx_counter = itertools.count(1)

    # ---- physics ------------------------------------------------------------------------------
    def applied_limit_a(self, connector_id: int = 1) -> float:
        """The limit [A per phase] the charger applies now: OCPP stacking of its profiles, or its maximum."""
        s = self.sessions.get(connector_id)
        lim = pr.active_limit_a(
            self.profiles, connector_id, self.clock(), transaction_id=None if s is None else s.transaction_id,
            tx_start=None if s is None else s.start, voltage_v=self.voltage_v,
            phases=self.phases if s is None else min(s.car.phases, self.phases),
        )
        return self.max_current_a if lim is None else min(lim, self.max_current_a)

    def draw_a(self, connector_id: int = 1) -> float:
        """Current [A per phase] the car draws now (0 below its minimum or when it is full)."""
        s = self.sessions.get(connector_id)
        if s is None or s.transaction_id is None or s.ended or s.delivered_wh >= s.car.energy_kwh * 1000.0:
            return 0.0
        offered = self.applied_limit_a(connector_id)
        if offered < s.car.min_current_a:
            return 0.0
        return min(offered, s.car.max_current_a) * self.quirks.draw_fraction

    def car_phases(self, connector_id: int = 1) -> int:
        """Phases the plugged car uses on this charger."""
        s = self.sessions.get(connector_id)
        return self.phases if s is None else min(s.car.phases, self.phases)

    def advance(self) -> None:
        """Integrate energy up to now at the current draw (call before anything changes the draw)."""
        now = self.clock()
        if self._last_advance is not None:
            dt_h = max((now - self._last_advance).total_seconds(), 0.0) / 3600.0
            for c, s in self.sessions.items():
                wh = self.draw_a(c) * self.car_phases(c) * self.voltage_v * dt_h
                if s.transaction_id is not None:
                    wh = min(wh, max(s.car.energy_kwh * 1000.0 - s.delivered_wh, 0.0))
                s.delivered_wh += wh
                self.register_wh[c] += wh
        self._last_advance = now

    def meter_sample(self, connector_id: int) -> dict[str, float]:
        """Current readings of a connector: energy_wh, power_w, current per phase, offered, soc."""
        self.advance()
        s = self.sessions.get(connector_id)
        draw, n = self.draw_a(connector_id), self.car_phases(connector_id)
        cur = [draw if i < n else 0.0 for i in range(3)]
        soc = math.nan
        if s is not None:
            soc = min(100.0, s.car.soc_percent + 100.0 * s.delivered_wh / 1000.0 / s.car.battery_kwh)
        return {"energy_wh": self.register_wh[connector_id], "power_w": draw * n * self.voltage_v,
                "l1": cur[0], "l2": cur[1], "l3": cur[2], "offered_a": self.applied_limit_a(connector_id),
                "soc": soc}

    # ---- profiles (called by the protocol clients) ----------------------------------------------
    def on_set_profile(self, connector_id: int, payload: dict) -> str:
        """Apply SetChargingProfile as a charger would; returns the status."""
        self.received.append(("SetChargingProfile", {"connector_id": connector_id, **payload}))
        purpose = payload["charging_profile_purpose"]
        if self.quirks.not_supported:
            if self.version == "1.6":
                return "NotSupported"
            raise NotSupportedError(details={"cause": "smart charging not supported"})
        s = self.sessions.get(connector_id)
        if purpose == pr.TX:
            tx = payload.get("transaction_id")
            if self.quirks.reject_tx_profile or connector_id == 0 or s is None or s.transaction_id is None:
                return "Rejected"
            if self.version != "1.6" and tx is None:
                return "Rejected"  # K02: a 2.0.1 TxProfile must name its transaction
            if tx is not None and str(tx) != s.transaction_id:
                return "Rejected"
        if purpose in pr.MAX_PURPOSES and connector_id != 0:
            return "Rejected"
        if purpose in pr.MAX_PURPOSES and purpose != (pr.MAX_16 if self.version == "1.6" else pr.MAX_201):
            return "Rejected"
        if connector_id > self.n_connectors:
            return "Rejected"
        self.advance()
        self.profiles = pr.add_profile(self.profiles, pr.Profile.from_payload(connector_id, payload))
        return "Accepted"

    def on_clear_profiles(self, **criteria) -> str:
        """Apply ClearChargingProfile; Accepted when something was removed, else Unknown."""
        self.received.append(("ClearChargingProfile", criteria))
        self.advance()
        self.profiles, n = pr.clear_matching(self.profiles, **criteria)
        return "Accepted" if n else "Unknown"

    def configure_measurands(self, value: str) -> bool:
        """Sample the comma-separated OCPP measurands ``value`` in periodic meter values from now on.

        What a station does with 1.6 ChangeConfiguration(MeterValuesSampledData) or 2.0.1
        SetVariables(SampledDataCtrlr.TxUpdatedMeasurands).

        Parameters
        ----------
        value : str
            Comma-separated measurands, e.g. ``"Energy.Active.Import.Register,Current.Import"``.

        Returns
        -------
        bool
            True when adopted; False, nothing changed, for an empty list or one naming a
            measurand this meter does not model (the station answers Rejected).
        """
        items = [x.strip() for x in str(value).split(",") if x.strip()]
        if not items or any(x not in MEASURANDS for x in items):
            return False
        self.measurands = list(dict.fromkeys(items))
        return True

    def variables(self) -> dict[str, dict[str, tuple[bool, str]]]:
        """The station's configuration as ``{component: {variable: (read-only, value)}}``.

        2.0.1 components and variables; 1.6 keys under the component ``""``.
        """
        sampled = ",".join(self.measurands)
        return {"": {"ChargingScheduleAllowedChargingRateUnit":
                     (True, "Current" if self.quirks.rate_unit == "A" else "Power"),
                     "MeterValuesSampledData": (False, sampled)},
                "SmartChargingCtrlr": {"RateUnit": (True, self.quirks.rate_unit)},
                "SampledDataCtrlr": {"TxUpdatedMeasurands": (False, sampled)}}

    def composite(self, connector_id: int, duration_s: int, unit: str | None) -> tuple[datetime, str, list[dict]]:
        """(start, unit, periods) of the composite schedule the charger will follow."""
        now = self.clock()
        s = self.sessions.get(connector_id)
        n = self.car_phases(connector_id)
        sched = pr.composite_schedule_a(
            self.profiles, connector_id, now, duration_s, transaction_id=None if s is None else s.transaction_id,
            tx_start=None if s is None else s.start, voltage_v=self.voltage_v, phases=n)
        unit = unit or "A"
        periods = []
        for off, lim in sched:
            a = self.max_current_a if lim is None else min(lim, self.max_current_a)
            value = pr.floor_step(a) if unit == "A" else pr.floor_step(a * n * self.voltage_v, 1.0)
            periods.append({"start_period": int(off), "limit": value})
        return now, unit, periods

    # ---- connection -----------------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Run the station (connect, boot, meter values, reconnect) as a task."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"sim:{self.cp_id}")
        return self._task

    async def stop(self) -> None:
        """Disconnect for good."""
        self._stopping = True
        self._drop_now.set()
        self._reconnect_now.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=5.0)
            if not done:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    def drop(self) -> None:
        """Drop the connection now (it comes back after ``quirks.reconnect_delay_s``)."""
        self._reconnect_now.clear()
        self._drop_now.set()

    def reconnect(self) -> None:
        """End the pause after a drop now instead of after ``quirks.reconnect_delay_s``.

        Lets a test hold a station offline for exactly as long as a condition needs (a long
        ``reconnect_delay_s``, then this) rather than racing a timer.
        """
        self._reconnect_now.set()

    async def wait_connected(self, timeout: float = 60.0) -> None:
        """Wait until connected and booted (or resumed after a reconnect); ``timeout`` [s] only
        guards against a charger that can never connect (a busy machine may take a while)."""
        await asyncio.wait_for(self.connected.wait(), timeout)

    def _headers(self) -> dict[str, str]:
        if self.password is None:
            return {}
        token = base64.b64encode(f"{self.cp_id}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def run(self) -> None:
        """Connect and serve until :meth:`stop`; reconnects after drops and refusals."""
        proto = "ocpp1.6" if self.version == "1.6" else "ocpp2.0.1"
        while not self._stopping:
            try:
                async with connect(f"{self.url}/{self.cp_id}", subprotocols=[proto], additional_headers=self._headers(),
                                   ssl=self.ssl, open_timeout=10, ping_interval=None, compression=None) as ws:
                    await self._session(ws)
            except InvalidStatus as exc:  # refused at the handshake (401, 404): retrying will not help
                log.warning("%s: refused with HTTP %s", self.cp_id, exc.response.status_code)
                self.last_error = exc
                return
            except (OSError, ConnectionClosed, asyncio.TimeoutError) as exc:
                log.info("%s: connection ended (%r)", self.cp_id, exc)
            except Exception as exc:
                log.warning("%s: connection failed: %r", self.cp_id, exc)
                self.last_error = exc
            finally:
                self.connected.clear()
                self.client = None
            if not self._stopping:
                try:
                    await asyncio.wait_for(self._reconnect_now.wait(), self.quirks.reconnect_delay_s)
                except asyncio.TimeoutError:
                    pass
                self._reconnect_now.clear()

    async def _session(self, ws) -> None:
        cls = _Client16 if self.version == "1.6" else _Client201
        client = cls(self.cp_id, ws, response_timeout=self.response_timeout_s)
        client.sim = self
        self.client = client
        self.connections += 1
        self._drop_now.clear()
        reader = asyncio.create_task(client.start())
        try:
            if not self.booted:
                await client.boot()
                self.booted = True
            for c in range(1, self.n_connectors + 1):
                await client.status(c, self._status(c))
            self.connected.set()
            meter = asyncio.create_task(self._meter_loop(client))
            waits = [reader, asyncio.create_task(self._drop_now.wait())]
            if self.quirks.drop_every_s:
                waits.append(asyncio.create_task(asyncio.sleep(self.quirks.drop_every_s)))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for t in [meter, *waits[1:]]:
                t.cancel()
        finally:
            self.connected.clear()
            reader.cancel()
            await ws.close()

    def _status(self, c: int) -> str:
        s = self.sessions.get(c)
        if s is None:
            return "Available"
        if self.version != "1.6":
            return "Occupied"
        return "Charging" if self.draw_a(c) > 0 else "SuspendedEV"

    async def _meter_loop(self, client) -> None:
        # Real chargers are not synchronized: the first reading comes at a random phase.
        await asyncio.sleep(random.uniform(0.0, self.meter_interval_s))
        while True:
            for c, s in list(self.sessions.items()):
                if s.transaction_id is not None:
                    try:
                        await client.meter(s, self.meter_sample(c))
                    except (asyncio.TimeoutError, ConnectionClosed):
                        return
                    except Exception:
                        log.exception("%s: meter values failed", self.cp_id)
            await asyncio.sleep(self.meter_interval_s)

    # ---- what a driver does ---------------------------------------------------------------------
    async def plug_in(self, car: Car | None = None, *, connector_id: int = 1, id_tag: str = "TAG1",
                      send_needs: bool = True) -> str:
        """Plug a car in, authorize, start a transaction; returns its transaction id.

        A 2.0.1 station with ``send_needs`` reports the car's departure and energy
        (NotifyEVChargingNeeds) after the start.
        """
        await self.wait_connected()
        car = car or Car()
        self.advance()
        s = Session(connector_id, car, id_tag, start=self.clock(), meter_start_wh=self.register_wh[connector_id])
        self.sessions[connector_id] = s
        await self.client.plug_in(s)
        if self.version != "1.6" and send_needs and (car.departure is not None):
            await self.client.needs(s, self)
        return s.transaction_id  # type: ignore[return-value]

    async def unplug(self, connector_id: int = 1, reason: str = "EVDisconnected") -> None:
        """Stop the transaction and unplug."""
        await self.wait_connected()
        self.advance()
        s = self.sessions[connector_id]
        m = self.meter_sample(connector_id)
        s.ended = True  # the meter reading of the stop is the last energy of the session
        await self.client.unplug(s, m, reason)
        del self.sessions[connector_id]
        self.profiles = [p for p in self.profiles if not (p.purpose == pr.TX and p.connector_id == connector_id)]
        await self.client.status(connector_id, "Available")

    async def send_meter_now(self, connector_id: int = 1) -> None:
        """Send meter values at once (tests use this instead of waiting for the interval)."""
        await self.wait_connected()
        await self.client.meter(self.sessions[connector_id], self.meter_sample(connector_id))


# ---- protocol clients ----------------------------------------------------------------------------
async def wait_all_connected(chargers, *, stall_s: float = 60.0) -> None:
    """Wait until every simulated charger is connected and booted.

    Waits on the chargers' own connection events, as long as they keep coming: it gives up
    only when none connected for ``stall_s`` [s]. So a busy machine that connects 24 chargers
    slowly still gets there, while a charger that can never connect ends the wait.

    Parameters
    ----------
    chargers : iterable of SimCharger
        Started chargers (:meth:`SimCharger.start`).
    stall_s : float
        Longest wait [s] without any charger connecting.

    Raises
    ------
    TimeoutError
        Naming the chargers still waiting, when none connected for ``stall_s``.
    """
    pending = {asyncio.ensure_future(c.connected.wait()): c for c in chargers}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, timeout=stall_s, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                names = ", ".join(sorted(c.cp_id for c in pending.values()))
                raise TimeoutError(f"{len(pending)} simulated charger(s) not connected, none connected in the last "
                                   f"{stall_s:g} s: {names}")
            for d in done:
                pending.pop(d)
    finally:
        for f in pending:
            f.cancel()


class _SilentMixin:
    sim: SimCharger

    async def route_message(self, raw_msg):
        # A charger that swallows SetChargingProfile (and keeps serving everything else).
        if self.sim.quirks.silent_profiles and '"SetChargingProfile"' in raw_msg:
            self.sim.received.append(("SetChargingProfile", {"ignored": True}))
            return
        await super().route_message(raw_msg)


class _Client16(_SilentMixin, _CP16):
    sim: SimCharger

    async def boot(self) -> None:
        await self.call(call16.BootNotification(charge_point_model="nowblock-sim", charge_point_vendor="nowblock",
                                                firmware_version="1.0"))

    async def status(self, c: int, status: str) -> None:
        await self.call(call16.StatusNotification(connector_id=c, error_code="NoError", status=status,
                                                  timestamp=iso(self.sim.clock())))

    async def plug_in(self, s: Session) -> None:
        await self.status(s.connector_id, "Preparing")
        await self.call(call16.Authorize(id_tag=s.id_tag))
        res = await self.call(call16.StartTransaction(connector_id=s.connector_id, id_tag=s.id_tag,
                                                      meter_start=int(s.meter_start_wh), timestamp=iso(s.start)))
        s.transaction_id = str(res.transaction_id)
        await self.status(s.connector_id, "Charging")

    async def meter(self, s: Session, m: dict) -> None:
        await self.call(call16.MeterValues(connector_id=s.connector_id, transaction_id=int(s.transaction_id),
                                           meter_value=[_mv16(self.sim.clock(), m, self.sim.measurands)]))

    async def unplug(self, s: Session, m: dict, reason: str) -> None:
        await self.call(call16.StopTransaction(meter_stop=int(m["energy_wh"]), timestamp=iso(self.sim.clock()),
                                               transaction_id=int(s.transaction_id), reason=reason,
                                               id_tag=s.id_tag))
        await self.status(s.connector_id, "Finishing")

    @on(A16.set_charging_profile)
    def on_set_charging_profile(self, connector_id, cs_charging_profiles, **kw):
        return res16.SetChargingProfile(status=self.sim.on_set_profile(connector_id, cs_charging_profiles))

    @on(A16.clear_charging_profile)
    def on_clear_charging_profile(self, id=None, connector_id=None, charging_profile_purpose=None,
                                  stack_level=None, **kw):
        return res16.ClearChargingProfile(status=self.sim.on_clear_profiles(
            profile_id=id, connector_id=connector_id, purpose=charging_profile_purpose, stack_level=stack_level))

    @on(A16.get_composite_schedule)
    def on_get_composite_schedule(self, connector_id, duration, charging_rate_unit=None, **kw):
        start, unit, periods = self.sim.composite(connector_id, duration, charging_rate_unit)
        return res16.GetCompositeSchedule(
            status="Accepted", connector_id=connector_id, schedule_start=iso(start),
            charging_schedule={"duration": duration, "start_schedule": iso(start), "charging_rate_unit": unit,
                               "charging_schedule_period": periods})

    @on(A16.get_configuration)
    def on_get_configuration(self, key=None, **kw):
        known = self.sim.variables()[""]
        asked = key or list(known)
        return res16.GetConfiguration(
            configuration_key=[{"key": k, "readonly": known[k][0], "value": known[k][1]} for k in asked if k in known],
            unknown_key=[k for k in asked if k not in known] or None)

    @on(A16.change_configuration)
    def on_change_configuration(self, key, value, **kw):
        # Answered from the station's own state: awaiting a CALL inside an @on handler deadlocks the ocpp library.
        self.sim.received.append(("ChangeConfiguration", {"key": key, "value": value}))
        known = self.sim.variables()[""]
        if key not in known:
            status = "NotSupported"
        elif known[key][0]:
            status = "Rejected"  # read-only
        else:
            status = "Accepted" if self.sim.configure_measurands(value) else "Rejected"
        return res16.ChangeConfiguration(status=status)


class _Client201(_SilentMixin, _CP201):
    sim: SimCharger

    async def boot(self) -> None:
        await self.call(call201.BootNotification(
            charging_station={"model": "nowblock-sim", "vendor_name": "nowblock", "firmware_version": "1.0"},
            reason="PowerUp"))

    async def status(self, c: int, status: str) -> None:
        await self.call(call201.StatusNotification(timestamp=iso(self.sim.clock()), connector_status=status,
                                                   evse_id=c, connector_id=1))

    async def plug_in(self, s: Session) -> None:
        await self.status(s.connector_id, "Occupied")
        await self.call(call201.Authorize(id_token={"id_token": s.id_tag, "type": "ISO14443"}))
        s.transaction_id = f"{self.sim.cp_id}-{next(self.sim._tx_counter)}-{int(s.start.timestamp())}"
        m = self.sim.meter_sample(s.connector_id)
        await self._event(s, "Started", "Authorized", m, charging_state="Charging",
                          evse={"id": s.connector_id, "connector_id": 1},
                          id_token={"id_token": s.id_tag, "type": "ISO14443"})

    async def _event(self, s: Session, event_type: str, trigger: str, m: dict, charging_state=None,
                     measurands: Sequence[str] = MEASURANDS, **extra):
        info = {"transaction_id": s.transaction_id}
        if charging_state:
            info["charging_state"] = charging_state
        if "stopped_reason" in extra:
            info["stopped_reason"] = extra.pop("stopped_reason")
        seq = s.seq_no
        s.seq_no += 1
        await self.call(call201.TransactionEvent(
            event_type=event_type, timestamp=iso(self.sim.clock()), trigger_reason=trigger, seq_no=seq,
            transaction_info=info, meter_value=[_mv201(self.sim.clock(), m, measurands)], **extra))

    async def meter(self, s: Session, m: dict) -> None:
        # TxUpdatedMeasurands governs only these; Started and Ended carry every reading.
        await self._event(s, "Updated", "MeterValuePeriodic", m,
                          charging_state="Charging" if m["power_w"] > 0 else "SuspendedEV",
                          measurands=self.sim.measurands)

    async def needs(self, s: Session, sim: SimCharger) -> None:
        car = s.car
        await self.call(call201.NotifyEVChargingNeeds(evse_id=s.connector_id, charging_needs={
            "requested_energy_transfer": {1: "AC_single_phase", 2: "AC_two_phase"}.get(car.phases, "AC_three_phase"),
            "departure_time": iso(car.departure),
            "ac_charging_parameters": {"energy_amount": int(car.energy_kwh * 1000), "ev_min_current": int(car.min_current_a),
                                       "ev_max_current": int(car.max_current_a), "ev_max_voltage": 400}}))

    async def unplug(self, s: Session, m: dict, reason: str) -> None:
        await self._event(s, "Ended", "EVCommunicationLost", m, charging_state="Idle", stopped_reason=reason)

    @on(A201.set_charging_profile)
    def on_set_charging_profile(self, evse_id, charging_profile, **kw):
        return res201.SetChargingProfile(status=self.sim.on_set_profile(evse_id, charging_profile))

    @on(A201.clear_charging_profile)
    def on_clear_charging_profile(self, charging_profile_id=None, charging_profile_criteria=None, **kw):
        c = charging_profile_criteria or {}
        return res201.ClearChargingProfile(status=self.sim.on_clear_profiles(
            profile_id=charging_profile_id, connector_id=c.get("evse_id"),
            purpose=c.get("charging_profile_purpose"), stack_level=c.get("stack_level")))

    @on(A201.get_composite_schedule)
    def on_get_composite_schedule(self, duration, evse_id, charging_rate_unit=None, **kw):
        start, unit, periods = self.sim.composite(evse_id, duration, charging_rate_unit)
        return res201.GetCompositeSchedule(status="Accepted", schedule={
            "evse_id": evse_id, "duration": duration, "schedule_start": iso(start), "charging_rate_unit": unit,
            "charging_schedule_period": periods})

    def _lookup(self, d: dict) -> tuple[str, tuple[bool, str] | None]:
        # (status when not found or not an Actual value, (read-only, value) when found)
        comp = self.sim.variables().get(d["component"]["name"]) if d["component"]["name"] else None
        if comp is None:
            return "UnknownComponent", None
        if d["variable"]["name"] not in comp:
            return "UnknownVariable", None
        if d.get("attribute_type", "Actual") != "Actual":
            return "NotSupportedAttributeType", None
        return "Accepted", comp[d["variable"]["name"]]

    @on(A201.get_variables)
    def on_get_variables(self, get_variable_data, **kw):
        out = []
        for d in get_variable_data:
            status, found = self._lookup(d)
            r = {"attribute_status": status, "component": d["component"], "variable": d["variable"]}
            if found is not None:
                r["attribute_value"] = found[1]
            out.append(r)
        return res201.GetVariables(get_variable_result=out)

    @on(A201.set_variables)
    def on_set_variables(self, set_variable_data, **kw):
        # Answered from the station's own state: awaiting a CALL inside an @on handler deadlocks the ocpp library.
        self.sim.received.append(("SetVariables", {"set_variable_data": set_variable_data}))
        out = []
        for d in set_variable_data:
            status, found = self._lookup(d)
            if found is not None:  # only TxUpdatedMeasurands is writable
                status = "Rejected" if found[0] else (
                    "Accepted" if self.sim.configure_measurands(d["attribute_value"]) else "Rejected")
            out.append({"attribute_status": status, "component": d["component"], "variable": d["variable"]})
        return res201.SetVariables(set_variable_result=out)


# measurand: (reading of SimCharger.meter_sample, unit, decimals)
_READINGS = {"Energy.Active.Import.Register": ("energy_wh", "Wh", 1), "Power.Active.Import": ("power_w", "W", 1),
             "Current.Offered": ("offered_a", "A", 1), "SoC": ("soc", "Percent", 0)}


def _readings(m: dict, measurands: Sequence[str]) -> list[tuple[str, str | None, float, str, int]]:
    # (measurand, phase, value, unit, decimals) of the readings asked for; SoC only with a car.
    out = []
    for name in measurands:
        if name == "Current.Import":
            out += [(name, p, m[p.lower()], "A", 2) for p in ("L1", "L2", "L3")]
        elif not (name == "SoC" and math.isnan(m["soc"])):
            key, unit, digits = _READINGS[name]
            out.append((name, None, m[key], unit, digits))
    return out


def _extra(name: str, phase: str | None) -> dict:
    return {**({"phase": phase} if phase else {}), **({"location": "EV"} if name == "SoC" else {})}


def _mv16(t: datetime, m: dict, measurands: Sequence[str] = MEASURANDS) -> dict:
    sv = [{"value": f"{v:.{d}f}", "measurand": n, "unit": u, **_extra(n, p)} for n, p, v, u, d in _readings(m, measurands)]
    return {"timestamp": iso(t), "sampled_value": sv}


def _mv201(t: datetime, m: dict, measurands: Sequence[str] = MEASURANDS) -> dict:
    sv = [{"value": round(v, d), "measurand": n, "unit_of_measure": {"unit": u}, **_extra(n, p)}
          for n, p, v, u, d in _readings(m, measurands)]
    return {"timestamp": iso(t), "sampled_value": sv}
