"""What the central system knows of each charging station: its connectors, transactions,
the profiles it accepted, what it refused and reported (the records :class:`nowblock.ocpp.state.LiveState`
keeps, per OCPP identity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.edge import ClockOffset
from nowblock.ocpp.events import Event


#: Answers after which asking again will not help until the station reboots.
PERMANENT_REFUSALS = ("NotSupported", "NotImplemented")


@dataclass
class Transaction:
    """A charging session as the charger reports it. Energy [Wh], currents [A], power [W].

    Its record (``start``, ``stop``, the dates its meter values are stored at) is in our clock:
    each stamp less the station's clock offset estimated when it arrived, then kept between its
    start and its stop (:meth:`LiveState.on_meter <nowblock.ocpp.state.LiveState.on_meter>`,
    :func:`~nowblock.ocpp.edge.checked_stop`). Its readings are ordered by the station's own stamps
    (``last_stamp``): ordered in ours, readings 5 ms apart swapped as the estimate moved.
    """

    cp_id: str
    transaction_id: str
    connector_id: int
    start: datetime  # [our clock] its start as the station stamped it, less its clock offset then
    id_tag: str | None = None
    meter_start_wh: float | None = None
    energy_register_wh: float | None = None
    current_a: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    power_w: float = math.nan
    soc_percent: float = math.nan
    offered_current_a: float = math.nan
    phases_used: int | None = None
    power_phases: int | None = None  # a station taking watts: the phases its accepted TxProfile's power is for
    departure: datetime | None = None
    energy_requested_kwh: float = math.nan
    ev_max_current_a: float = math.nan
    ev_min_current_a: float = math.nan
    last_meter: datetime | None = None  # [our clock] when its last reading was taken (its age)
    # Its last meter value's time by the station's clock: what orders its readings.
    last_stamp: datetime | None = None
    #: [our clock] The date its last applied reading is stored at (``last_meter`` kept between its
    #: start and stop) and the latest date of any of its stored meter values (late ones too).
    record_time: datetime | None = None
    recorded_until: datetime | None = None
    # Its last applied reading as parsed: the same again with the same stamp is a resent CALL,
    # stored at the same date (the store ignores the repeat).
    last_reading: dict | None = field(default=None, repr=False, compare=False)
    stop: datetime | None = None  # [our clock] no earlier than ``start`` and ``recorded_until``
    meter_stop_wh: float | None = None
    stop_reason: str | None = None
    orphaned: bool = False  # its station (re)connected or rebooted since, and has not named it again
    known_at: datetime | None = None  # when this process learnt of it, by our clock
    start_event: Event | None = field(default=None, repr=False, compare=False)

    @property
    def session_id(self) -> str:
        """``<cp_id>:<transaction_id>``: unique across stations (2.0.1 ids are per station)."""
        return f"{self.cp_id}:{self.transaction_id}"

    @property
    def power_phases_off(self) -> int:
        """The phases the car draws on less those its accepted TxProfile's power is for (a
        station taking watts, :attr:`power_phases`); 0 when the same or either is unknown. Below
        0 the power falls on fewer phases (all of it on one: 30 A where 10 A were planned), above
        0 it is spread over more (a third on each); either way it is sent again."""
        return self.phases_used - self.power_phases if self.power_phases and self.phases_used else 0

    @property
    def energy_delivered_kwh(self) -> float:
        """Energy delivered in this session so far [kWh] (0 before the first reading)."""
        end = self.meter_stop_wh if self.meter_stop_wh is not None else self.energy_register_wh
        if end is None or self.meter_start_wh is None:
            return 0.0
        return max(end - self.meter_start_wh, 0.0) / 1000.0


@dataclass
class Connector:
    """A connector (1.6) or EVSE (2.0.1); ``known`` once it ran a transaction or took a profile."""

    connector_id: int
    status: str = "Unknown"
    error_code: str | None = None
    transaction_id: str | None = None
    known: bool = False


#: Statuses (1.6 and 2.0.1) of a connector with a car plugged in.
PLUGGED = frozenset({"Preparing", "Occupied", "SuspendedEV", "SuspendedEVSE", "Charging", "Finishing"})


@dataclass
class DispatchRecord:
    """The outcome of one limit dispatch: what was wanted and what the charger accepted."""

    time: datetime
    wanted_a: float
    purpose: str | None  # the purpose that was accepted, None when nothing was
    accepted_a: float | None
    attempts: list[tuple[str, str]]  # (purpose, answer) in order: Accepted, Rejected, NotSupported, ...


@dataclass(frozen=True)
class Refusal:
    """A request a station turned down: ``what`` is a profile purpose (TxProfile,
    TxDefaultProfile, ChargePointMaxProfile) or an action (GetCompositeSchedule,
    GetConfiguration, GetVariables); ``answer`` is Rejected, NotSupported, NotImplemented or
    another CALLERROR code; ``transaction_id`` is set for a TxProfile refused for one
    transaction (a Rejected TxProfile says nothing about the next one)."""

    what: str
    answer: str
    time: datetime
    transaction_id: str | None = None

    @property
    def permanent(self) -> bool:
        """True for NotSupported/NotImplemented: the station cannot do it (until it reboots)."""
        return self.answer in PERMANENT_REFUSALS


@dataclass(frozen=True)
class ReportedLimit:
    """What a station said it applies on a connector (GetCompositeSchedule), read at ``time``.

    ``limit_a`` [A per phase] is the first period's limit (watts converted with the site
    voltage and the phases in use), None when the station answered Rejected or no schedule;
    ``periods`` are the schedule as reported [(start_s, limit in ``unit``)]."""

    time: datetime
    limit_a: float | None
    status: str
    unit: str | None = None
    periods: tuple[tuple[float, float], ...] = ()


@dataclass
class Station:
    """One charging station (OCPP identity) and what the central system knows about it."""

    cp_id: str
    version: str | None = None
    connected: bool = False
    last_seen: datetime | None = None
    boot: dict[str, Any] = field(default_factory=dict)
    connectors: dict[int, Connector] = field(default_factory=dict)
    profiles: list[pr.Profile] = field(default_factory=list)  # accepted by the charger, as we know
    #: Profiles sent whose answer never came (a time-out): the station may have applied them (a
    #: late answer is dropped). Each counts as possibly in force until a profile it would replace
    #: is accepted, or it runs out (see :meth:`LiveState.applied_limit_a`).
    unanswered: list[pr.Profile] = field(default_factory=list)
    rate_unit: str = "A"
    dispatch: dict[int, DispatchRecord] = field(default_factory=dict)
    #: What the station turned down, by purpose/action (see :class:`Refusal`); cleared at boot.
    refusals: dict[str, Refusal] = field(default_factory=dict)
    #: The limit the station last reported applying, per connector (GetCompositeSchedule).
    reported: dict[int, ReportedLimit] = field(default_factory=dict)
    #: Outcome of the fail-safe TxDefaultProfile sent after boot (None: not tried yet).
    failsafe: DispatchRecord | None = None
    #: Frames of this station answered with a framing/format CALLERROR, and answers to no pending call.
    frame_errors: int = 0
    stray_responses: int = 0
    #: The station's meter has read every phase's current at least once: a car's phases it
    #: declares (NotifyEVChargingNeeds) can then be checked by its next reading, and are planned.
    phased_meter: bool = False
    #: Its clock's offset from ours, from its timestamps: the times of the profiles it is sent.
    clock: ClockOffset = field(default_factory=ClockOffset)
    #: Connected, and no CALL yet: whether it rebooted is not known (see LiveState.on_connect).
    boot_unknown: bool = False
    #: Its transactions orphaned by its latest connect(s), not by a boot (see LiveState.on_connect).
    connect_orphans: set[str] = field(default_factory=set)
    #: [our clock] When it sent its latest BootNotification in this process (None: no boot
    #: seen); a meter value stamped before it (by the current clock estimate) was queued.
    booted_at: datetime | None = None
    #: [s] Its clock's offset as known before its latest boot: this process's estimate then, else
    #: (after a restart) the one its stored meter values show (None: not known). See before_boot.
    clock_before_boot_s: float | None = None
    #: [s] How far its latest stamp lies ahead of its clock estimate, when more than LATE_S (a
    #: forward clock step the estimate has not followed yet; None: none). See ``applied_limit_a``.
    clock_ahead_s: float | None = None

    def refused(self, what: str, *, transaction_id=None, now: datetime | None = None,
                memory_s: float = math.inf) -> Refusal | None:
        """The refusal of ``what`` still in force: permanent ones until the next boot, others
        for ``memory_s`` [s] after ``now`` (a TxProfile Rejected only for its transaction)."""
        r = self.refusals.get(what)
        if r is None or r.permanent:
            return r
        if r.transaction_id is not None and transaction_id is not None and str(transaction_id) != r.transaction_id:
            return None
        if now is not None and (now - r.time).total_seconds() > memory_s:
            return None
        return r

    def connector(self, connector_id: int) -> Connector:
        """The connector, created on first mention."""
        if connector_id not in self.connectors:
            self.connectors[connector_id] = Connector(connector_id)
        return self.connectors[connector_id]
