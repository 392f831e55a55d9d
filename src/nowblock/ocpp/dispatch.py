"""Sending limits to chargers: retries with backoff, then a fallback chain.

A limit for a running transaction goes out as a TxProfile with its transaction id. A charger
that answers Rejected, NotSupported, a CALLERROR or nothing gets the same request again after
a growing pause (``backoff_s * 2**attempt``), except for NotSupported/NotImplemented, which
will not change; then the next purpose in the chain is tried: TxDefaultProfile on the
connector, then the station maximum (ChargePointMaxProfile / ChargingStationMaxProfile on
connector 0). Only profiles the charger accepted enter the live state, so the limit the
snapshot reports is the one the charger applies, never the one we merely sent.

Every profile of the chain lives as long as the TxProfile it stands in for (``validity_s``,
refreshed by the control steps): a fallback that outlived the central system would hold a
limit above the fail-safe share once nobody can lower it (an outside test: a 7-day TxDefault
of 16 A on a station whose neighbours fell back to their 8 A fail-safe: 32 A on a 24 A grid
after kill -9). The fallback TxDefault (id ``100 + c``) sits at stack level 1, above the idle
default (id ``200 + c``) and the fail-safe (connector 0), both at level 0: a 2.0.1 station
rejects a second profile of the same purpose, stack level and EVSE (K01.FR.06), and a 1.6
station would let it replace the idle default, which then no longer guards the next car. It is
cleared when the transaction ends (:meth:`CentralSystem.after_stop`).

What a charger turns down is remembered on its :class:`~nowblock.ocpp.state.Station`
(``refusals``): a purpose it answered NotSupported/NotImplemented is not sent again until it
reboots, one it Rejected (after the retries) not for ``CentralSystem.refusal_memory_s``
(a Rejected TxProfile only for that transaction); the chain goes straight on to the next
purpose, recording ``(purpose, "Skipped:<answer>")`` in the attempts.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from nowblock.ocpp import profiles as pr
from nowblock.ocpp.connection import CallErrorReceived
from nowblock.ocpp.state import DispatchRecord, ReportedLimit

if TYPE_CHECKING:  # pragma: no cover
    from nowblock.ocpp.server import CentralSystem

log = logging.getLogger(__name__)
_PERMANENT = {"NotSupported", "NotImplemented"}
# Answers that will come again if asked again soon (the charger understood and said no, or
# cannot parse what we send); timeouts and lost connections are not among them.
_REFUSALS = {"Rejected", "FormationViolation", "FormatViolation", "PropertyConstraintViolation",
             "TypeConstraintViolation", "OccurenceConstraintViolation", "OccurrenceConstraintViolation",
             "ProtocolError", "SecurityError", "GenericError", "InternalError", "Unknown"}


async def send_profile(
    cs: "CentralSystem", cp_id: str, connector_id: int, purpose: str, current_a: float, *,
    validity_s: int, retries: int, backoff_s: float, attempts: list[tuple[str, str]],
    profile_id: int | None = None, stack_level: int | None = None,
) -> bool:
    """Send one profile, retrying; appends each answer to ``attempts``; True once accepted."""
    st = cs.state.station(cp_id)
    cp = cs.site.charge_point(cp_id)
    t = cs.state.running_on(cp_id, connector_id) if purpose == pr.TX else None
    # Watts need the car's phase count. The power counts on the phases the meter showed it uses
    # (unknown: 1, which cannot overload a phase, whatever the car does); numberPhases is what it
    # is planned on (unknown: every phase of its point), never 1 for a car planned on 3, which
    # told a 3-phase car to draw 32 A on L1 alone and kept it planned on one phase for good.
    known = t.phases_used if t is not None and t.phases_used else None
    phases = (known or 1) if st.rate_unit == "W" else cp.phases
    planned = min(known or cp.phases, cp.phases)
    target = 0 if purpose in pr.MAX_PURPOSES else connector_id
    refused = st.refused(purpose, transaction_id=None if t is None else t.transaction_id, now=cs.state.clock(),
                         memory_s=cs.refusal_memory_s)
    if refused is not None:
        attempts.append((purpose, f"Skipped:{refused.answer}"))
        return False
    answer = ""
    for attempt in range(retries + 1):
        conn = cs.connection(cp_id)
        if conn is None:
            attempts.append((purpose, "Disconnected"))
            return False
        payload = pr.build_profile(
            conn.version, purpose, current_a, connector_id=target, validity_s=validity_s, unit=st.rate_unit,
            phases=phases, voltage_v=cs.site.voltage_v, transaction_id=None if t is None else t.transaction_id,
            now=cs.state.clock(), profile_id=profile_id, stack_level=stack_level, number_phases=planned,
        )
        try:
            # In the station's clock (it applies no profile it thinks is not yet or no longer
            # valid); the state keeps ours, in which it evaluates what the station applies.
            answer = await conn.set_profile(target, pr.in_station_clock(payload, st.clock.offset_s))
        except asyncio.TimeoutError:
            answer = "Timeout"
        except CallErrorReceived as exc:
            answer = exc.code
        except Exception as exc:  # connection closed mid-call, schema trouble: all logged, none fatal
            log.warning("%s: SetChargingProfile %s failed: %r", cp_id, purpose, exc)
            answer = type(exc).__name__
        attempts.append((purpose, answer))
        if answer == "Accepted":
            if t is not None and st.rate_unit == "W":
                t.power_phases = phases  # a car then seen on fewer gets it again (CentralSystem._on_event)
            cs.state.on_profile_accepted(cp_id, target, payload)
            cs.state.on_accepted(cp_id, purpose)
            return True
        if answer == "Timeout":
            # It may have been taken (a slow station answers late, and a late answer is dropped):
            # counted as possibly in force. Not sent again, nor another purpose: each try waits
            # the whole time-out while the station's calls queue, and the limit decided then goes
            # out a minute or two later (an outside test: 32 A decided at one step reached a
            # station 90-130 s later, as a TxProfile and then as a TxDefault for every future
            # transaction). The control loop decides afresh and sends again.
            cs.state.on_profile_unanswered(cp_id, target, payload)
            break
        if answer in _PERMANENT or cs.connection(cp_id) is None:
            break
        if attempt < retries:
            if _ended(cs, cp_id, connector_id, t):
                break
            await asyncio.sleep(backoff_s * 2**attempt)
            if _ended(cs, cp_id, connector_id, t):
                break
    if _ended(cs, cp_id, connector_id, t):
        # Its car left: retries for it only held the station lock, and with it the clearing of
        # its fallback and the idle default behind (5.7 s after the stop at 1.5 s answers, ~28 s
        # at the default time-outs); a refusal of its TxProfile says nothing about the next car.
        attempts.append((purpose, "Skipped:TransactionEnded"))
        return False
    if answer in _REFUSALS or answer in _PERMANENT:
        cs.state.on_refusal(cp_id, purpose, answer, transaction_id=t.transaction_id if t is not None else None)
    return False


def _ended(cs: "CentralSystem", cp_id: str, connector_id: int, t) -> bool:
    """Whether transaction ``t`` (None: a limit for no transaction) no longer runs on the connector."""
    return t is not None and cs.state.running_on(cp_id, connector_id) is not t


async def set_limit(
    cs: "CentralSystem", cp_id: str, connector_id: int, current_a: float, *,
    validity_s: int | None = None, retries: int | None = None, backoff_s: float | None = None,
    verify: bool = False, transaction_id: str | int | None = None,
) -> DispatchRecord:
    """Limit ``connector_id`` of ``cp_id`` to ``current_a`` [A per phase] through the fallback chain.

    Every profile sent lives ``validity_s`` [s] (default ``cs.tx_validity_s``), the fallbacks
    too. ``transaction_id``, when given, is the transaction the limit was decided for: if it no
    longer runs on the connector (the car left while the step ran), or ends while the chain is
    tried, nothing (more) is sent, so a departed car's limit never becomes the connector's
    default; nor while it is an orphan of its station's (re)connect or boot (``Transaction.orphaned``,
    attempt ``Skipped:Orphaned``): the station may run it no more; without it, nothing is sent to a connector whose transaction ended in the last
    :data:`RECENT_STOP_S`. Returns (and records in the state) which purpose the charger accepted and the
    limit it applies by the profiles it holds; with ``verify`` that limit is read back with
    GetCompositeSchedule instead.
    """
    async with cs.station_lock(cp_id):  # one limit change per station at a time, so answers cannot cross
        return await set_limit_locked(cs, cp_id, connector_id, current_a, validity_s=validity_s, retries=retries,
                                      backoff_s=backoff_s, verify=verify, transaction_id=transaction_id)


async def set_limit_locked(
    cs: "CentralSystem", cp_id: str, connector_id: int, current_a: float, *,
    validity_s: int | None = None, retries: int | None = None, backoff_s: float | None = None,
    verify: bool = False, transaction_id: str | int | None = None,
) -> DispatchRecord:
    """:func:`set_limit` for a caller that holds ``cs.station_lock(cp_id)`` already (it reads
    what to send under the lock, e.g. the latest limit booked, so no step's newer limit can
    go out before it). ``current_a`` [A per phase], ``validity_s`` [s], ``backoff_s`` [s]."""
    validity_s = cs.tx_validity_s if validity_s is None else validity_s
    retries = cs.retries if retries is None else retries
    backoff_s = cs.backoff_s if backoff_s is None else backoff_s
    attempts: list[tuple[str, str]] = []
    t = cs.state.running_on(cp_id, connector_id)
    chain = ([pr.TX] if t is not None else []) + [pr.TX_DEFAULT, pr.MAX_16]
    if (transaction_id is not None and (t is None or str(t.transaction_id) != str(transaction_id))) or (
            transaction_id is None and t is None and _just_ended(cs, cp_id, connector_id)):
        # The car the limit was decided for has left (the step ran while it unplugged): as the
        # connector's default, its limit would outrank the idle default for the next car.
        attempts.append((pr.TX, "Skipped:TransactionEnded"))
        chain = []
    elif transaction_id is not None and t is not None and t.orphaned:
        # Its station (re)connected or rebooted since the step saw the car, and has not named it
        # since: it may run it no more (LiveState.on_connect). Sent on, a rebooted station refused
        # three TxProfiles for it, then took its 16 A as the connector's TxDefault.
        attempts.append((pr.TX, "Skipped:Orphaned"))
        chain = []
    accepted = None
    for purpose in chain:
        if t is not None and cs.state.running_on(cp_id, connector_id) is not t:
            # It ended during the retries: its limit must not stay behind as a default.
            attempts.append((purpose, "Skipped:TransactionEnded"))
            break
        if transaction_id is not None and t is not None and t.orphaned:  # its station reconnected meanwhile
            attempts.append((purpose, "Skipped:Orphaned"))
            break
        extra, amps = {}, current_a
        if purpose == pr.TX_DEFAULT:
            extra = dict(stack_level=pr.FALLBACK_DEFAULT_STACK_LEVEL)
        if purpose == pr.MAX_16:
            # Its own id and a higher stack level, so it never replaces a station maximum set on
            # purpose; and never above that one, which it overrides while it exists.
            extra = dict(profile_id=pr.FALLBACK_MAX_ID, stack_level=1)
            amps = min(current_a, _station_max_a(cs, cp_id))
        if await send_profile(cs, cp_id, connector_id, purpose, amps, validity_s=validity_s, retries=retries,
                              backoff_s=backoff_s, attempts=attempts, **extra):
            accepted = purpose
            break
        if attempts and attempts[-1][1] in ("Disconnected", "Timeout"):
            break
    if accepted == pr.TX:
        await _power_for_phases_left(cs, cp_id, connector_id, t, current_a, validity_s, retries, backoff_s, attempts)
    if accepted in (pr.TX, pr.TX_DEFAULT):
        await _lift_fallback_max(cs, cp_id, current_a, attempts)
    applied = cs.state.applied_limit_a(cp_id, connector_id)
    when = cs.state.clock()  # before a read-back, so the answer read counts as newer than this limit
    if verify and accepted is not None:
        applied = await verified_limit_a(cs, cp_id, connector_id, default=applied)
    rec = DispatchRecord(time=when, wanted_a=float(current_a), purpose=accepted,
                         accepted_a=applied if accepted is not None else None, attempts=attempts)
    if accepted is None and attempts and attempts[-1][1] == "Skipped:Orphaned":
        log.info("%s/%s: %.1f A not sent: transaction %s is an orphan of its station's (re)connect or boot",
                 cp_id, connector_id, current_a, transaction_id)
    elif accepted is None:
        log.warning("%s/%s: no profile accepted for %.1f A (%s)", cp_id, connector_id, current_a, attempts)
    cs.state.on_dispatch(cp_id, connector_id, rec)
    return rec


async def _power_for_phases_left(cs: "CentralSystem", cp_id: str, connector_id: int, t, current_a: float,
                                 validity_s: int, retries: int, backoff_s: float, attempts) -> None:
    # A limit in watts is the power of the phases the car drew on when it was built: a car that
    # went on on fewer while it was on the wire (no meter value flags it: the station's accepted
    # power was not known yet) puts all of it on its phases, 6900 W on one phase, 30 A for 10 A,
    # until the next meter value. Sent again at once for the phases left (twice at most).
    for _ in range(2):
        if (t is None or cs.state.running_on(cp_id, connector_id) is not t or cs.state.station(cp_id).rate_unit != "W"
                or t.power_phases_off >= 0):
            return
        if not await send_profile(cs, cp_id, connector_id, pr.TX, current_a, validity_s=validity_s, retries=retries,
                                  backoff_s=backoff_s, attempts=attempts):
            return


#: [s] A limit for a connector whose transaction ended this recently, sent without naming the
#: transaction, was decided for the car that left, not for the connector: it is not sent.
RECENT_STOP_S = 60.0


def _just_ended(cs: "CentralSystem", cp_id: str, connector_id: int) -> bool:
    now = cs.state.clock()
    return any(t.cp_id == cp_id and t.connector_id == connector_id and t.stop is not None
               and -RECENT_STOP_S <= (now - t.stop).total_seconds() <= RECENT_STOP_S
               for t in list(cs.state.transactions.values()))


async def _lift_fallback_max(cs: "CentralSystem", cp_id: str, current_a: float, attempts) -> None:
    # A station maximum we installed as a last resort would cap the new, accepted limit: clear it.
    st = cs.state.station(cp_id)
    ours = [p for p in st.profiles if p.id == pr.FALLBACK_MAX_ID and p.purpose in pr.MAX_PURPOSES]
    conn = cs.connection(cp_id)
    if not ours or conn is None:
        return
    try:
        answer = await conn.clear_profiles(profile_id=pr.FALLBACK_MAX_ID)
    except Exception as exc:
        answer = getattr(exc, "code", type(exc).__name__)
    attempts.append(("ClearStationMax", answer))
    if answer in ("Accepted", "Unknown"):
        cs.state.on_profiles_cleared(cp_id, profile_id=pr.FALLBACK_MAX_ID)


def _station_max_a(cs: "CentralSystem", cp_id: str) -> float:
    # The station maximum in force now, by the profiles the charger accepted (inf if none).
    maxes = [p for p in cs.state.station(cp_id).profiles if p.purpose in pr.MAX_PURPOSES and p.id != pr.FALLBACK_MAX_ID]
    lim = pr.active_limit_a(maxes, 0, cs.state.clock(), voltage_v=cs.site.voltage_v)
    return float("inf") if lim is None else lim


async def verified_limit_a(cs: "CentralSystem", cp_id: str, connector_id: int, default=None) -> float | None:
    """The charger's own composite limit now [A] (GetCompositeSchedule), or ``default`` if it fails."""
    rep = await read_applied_limit(cs, cp_id, connector_id)
    return default if rep is None or rep.limit_a is None else rep.limit_a


async def read_applied_limit(cs: "CentralSystem", cp_id: str, connector_id: int,
                             duration_s: int = 60) -> ReportedLimit | None:
    """Ask the charger what it applies on ``connector_id`` (GetCompositeSchedule, in its rate
    unit) and record the answer in the live state (``Station.reported``).

    Returns the :class:`~nowblock.ocpp.state.ReportedLimit` (``limit_a`` [A per phase] of the
    schedule's current period, watts converted with the site voltage and the phases in use),
    or None when the charger is offline, does not answer, or refused GetCompositeSchedule
    before (NotImplemented/NotSupported are remembered until it reboots).
    """
    what = "GetCompositeSchedule"
    st = cs.state.station(cp_id)
    if st.refused(what, now=cs.state.clock(), memory_s=cs.refusal_memory_s) is not None or cs.connection(cp_id) is None:
        return None
    try:
        res = await cs.get_composite_schedule(cp_id, connector_id, duration_s=duration_s, unit=st.rate_unit)
    except CallErrorReceived as exc:
        log.info("%s: GetCompositeSchedule answered %s", cp_id, exc.code)
        cs.state.on_refusal(cp_id, what, exc.code)
        return None
    except Exception as exc:
        log.warning("%s: GetCompositeSchedule failed: %r", cp_id, exc)
        return None
    lim = None
    periods = tuple(res["periods"])
    if res["status"] == "Accepted" and periods:
        start = res.get("start")  # by the station's clock
        elapsed = 0.0 if start is None else max((cs.state.clock() - start).total_seconds() + st.clock.offset_s, 0.0)
        lim = [p[1] for p in sorted(periods) if p[0] <= elapsed][-1:] or [periods[0][1]]
        lim = float(lim[0])
        if res.get("unit") == "W":
            t = cs.state.running_on(cp_id, connector_id)
            phases = t.phases_used if t is not None and t.phases_used else 1  # unknown: all may be on one
            lim = lim / (cs.site.voltage_v * phases)
        if not math.isfinite(lim) or lim < 0:
            lim = None
    elif res["status"] != "Accepted":
        cs.state.on_refusal(cp_id, what, res["status"])
    rep = ReportedLimit(cs.state.clock(), lim, str(res["status"]), res.get("unit"), periods)
    cs.state.on_reported_limit(cp_id, connector_id, rep)
    return rep
