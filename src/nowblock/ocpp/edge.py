"""What the central system accepts from a charging station, checked where it arrives.

A schema-valid frame can still carry what the rest of the system cannot hold: a payload
nested 50,000 deep (the JSON parser recurses), a lone UTF-16 surrogate (no database can
store it), an integer beyond 64 bits, ``NaN``, a timestamp in the year 1 or 9999 (pandas
covers 1677-2262 only), a departure centuries away, a connector id in the millions. Each is
caught here, before it reaches the live state or the store, and answered with a specific
CALLERROR or corrected with a logged warning. Nothing raw gets past this module.

:func:`parse_frame` checks a whole OCPP-J frame before any handler sees it;
:func:`event_time`, :func:`departure_time` and :func:`check_connector` are what the
handlers call on single fields.
"""

from __future__ import annotations

import json
import bisect
import logging
import math
import re
import statistics
from datetime import datetime, timedelta

from ocpp.exceptions import FormatViolationError, PropertyConstraintViolationError

from nowblock.ocpp.profiles import parse_time

log = logging.getLogger(__name__)

#: Largest frame accepted [bytes]; the WebSocket layer closes the connection on a bigger one
#: (close code 1009) before buffering it. OCPP frames are kilobytes; reports a few hundred.
MAX_FRAME_BYTES = 1 << 20
#: Deepest nesting of arrays/objects accepted. The deepest OCPP 2.0.1 message (a charging
#: profile inside SetChargingProfile) nests 6 levels, plus the frame array.
MAX_DEPTH = 32
#: Largest number of values (strings, numbers, arrays, objects) in one frame.
MAX_NODES = 200_000
#: Integers beyond signed 64 bits cannot be stored and no OCPP field needs them.
MAX_INT = 2**63 - 1
#: Connector/EVSE ids accepted (0 is the station itself); bounds the state a station can create.
MAX_CONNECTOR_ID = 32
#: Timestamps a station reports for events may lie this far in the past [s] (buffered
#: offline transactions are replayed later) ...
PAST_WINDOW_S = 366 * 86400.0
#: ... and this far in the future [s] (clock skew); outside, the central system's own time is used.
FUTURE_WINDOW_S = 900.0
#: A meter value dated more than this [s] after it arrived is dated when it arrived: a station
#: clock that runs ahead kept its car "fresh" up to FUTURE_WINDOW_S after its meter went quiet.
METER_AHEAD_S = 60.0
#: A meter value dated more than this [s] before it arrived is logged (at most hourly a station):
#: its station's clock runs behind, or it was queued while offline; either way its car counts
#: as stale (its reading is not known to be current), which is safe but wastes room.
METER_BEHIND_WARN_S = 300.0
_meter_warned: dict[str, datetime] = {}
_warned_at: dict[tuple[str, str], datetime] = {}  # (station, what) -> when last logged (:func:`hourly`)
#: A departure later than this [s] from now is taken as this far away (planning needs no more).
MAX_DEPARTURE_S = 7 * 86400.0
#: A departure earlier than this [s] before now is a wrong clock, not a car in a hurry: ignored.
PAST_DEPARTURE_S = 3600.0

# "[<type>, "<id>"" at the start of a frame: lets a frame that cannot be parsed still be answered
# with its own message id (OCPP-J ids are at most 36 characters).
_HEAD = re.compile(r'\s*\[\s*(\d{1,3}(?:\.0*)?)\s*,\s*"((?:[^"\\\x00-\x1f]|\\[^u]){1,36})"')


class FrameError(Exception):
    """A frame the central system will not route: ``kind`` is one of ``json``, ``depth``,
    ``size``, ``string``, ``number``; ``message_type`` and ``unique_id`` are what could be
    read from the frame's head (None when unreadable)."""

    def __init__(self, kind: str, why: str, message_type: int | None, unique_id: str | None) -> None:
        super().__init__(why)
        self.kind, self.why, self.message_type, self.unique_id = kind, why, message_type, unique_id


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:40]} out of range")
    return x


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # cheap length test first: int() of 4,300 digits is slow, more is refused
        raise ValueError("integer out of range")
    x = int(text)
    if abs(x) > MAX_INT:
        raise ValueError("integer out of range")
    return x


def _head(raw: str) -> tuple[int | None, str | None]:
    m = _HEAD.match(raw[:200])
    if m is None:
        return None, None
    kind = int(float(m.group(1)))
    try:
        uid = json.loads(f'"{m.group(2)}"')
    except ValueError:
        return kind, None
    return kind, uid


def parse_frame(raw: str | bytes) -> object:
    """Parse one OCPP-J frame, refusing what no handler should see.

    Raises :class:`FrameError` for: not UTF-8 / not JSON (also ``NaN``, ``Infinity``, numbers
    outside a float or a signed 64-bit integer), nesting deeper than :data:`MAX_DEPTH`
    (checked without recursion; the C parser stops itself at Python's recursion limit), more
    than :data:`MAX_NODES` values, or a string with a lone surrogate (``"\\ud83d"``: valid
    JSON escapes, but not text that can be stored). The error carries the message type and
    id read from the frame's head, so a CALL can still be answered with its own id.
    """
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("json", "binary frame is not UTF-8 text", None, None) from None
    if len(raw) > MAX_FRAME_BYTES:  # only reachable when the WebSocket layer allows more
        raise FrameError("size", f"frame of {len(raw)} characters exceeds {MAX_FRAME_BYTES}", *_head(raw))
    try:
        msg = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise FrameError("depth", f"nested deeper than {MAX_DEPTH} levels", *_head(raw)) from None
    except ValueError as exc:  # JSONDecodeError is a ValueError, so are the hooks' refusals
        kind = "number" if "range" in str(exc) or "not JSON" in str(exc) else "json"
        raise FrameError(kind, f"not valid JSON ({str(exc)[:80]})", *_head(raw)) from None
    _walk(msg, raw)
    return msg


def _walk(msg: object, raw: str) -> None:
    # Iterative, so a deep payload costs a list, not the C stack.
    stack: list[tuple[object, int]] = [(msg, 1)]
    nodes = 0
    while stack:
        obj, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise FrameError("size", f"more than {MAX_NODES} values in one frame", *_head(raw))
        if isinstance(obj, str):
            if not obj.isascii():
                _check_text(obj, raw)
        elif isinstance(obj, (list, dict)):
            if depth > MAX_DEPTH:
                raise FrameError("depth", f"nested deeper than {MAX_DEPTH} levels", *_head(raw))
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if not k.isascii():
                        _check_text(k, raw)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in obj)


def _check_text(s: str, raw: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError("string", "string with a lone UTF-16 surrogate (not valid Unicode)", *_head(raw)) from None


# ---- single fields ----------------------------------------------------------------------------
#: RFC 3339's date-time (full-date "T" full-time), the offset optional (see :func:`_parse`).
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")
_naive_warned: set[str] = set()


def _parse(value, what: str) -> datetime | None:
    # The schemas give every timestamp "format": "date-time"; the ocpp library does not check
    # formats, and answers every other schema keyword it does not single out (enum, pattern, ...)
    # with FormatViolation, so a string that is no date-time gets the same (1.6: FormationViolation).
    # Python reads more than RFC 3339 (a date alone became midnight UTC, 10 h early; no seconds;
    # "+0100"; compact and week dates: an outside test), so the shape is checked first. A time
    # without an offset is read as UTC, as the stations that send one mean it, and logged once:
    # refused, a station's StartTransaction would be (charging stops for a form).
    if isinstance(value, str) and not _DATE_TIME.fullmatch(value):
        raise FormatViolationError(
            description=f"{what}: not an RFC 3339 date-time", details={"cause": f"{what}={value[:60]!r}"})
    leap = isinstance(value, str) and value[17:19] == "60"
    try:
        t = parse_time(value[:17] + "59" + value[19:] if leap else value)
    except (ValueError, TypeError, OverflowError):
        raise FormatViolationError(
            description=f"{what}: not an RFC 3339 date-time", details={"cause": f"{what}={str(value)[:60]!r}"}
        ) from None
    if leap and t is not None:  # a leap second (RFC 3339 allows :60): the next second
        t = t + timedelta(seconds=1)
    if isinstance(value, str) and not value.endswith(("Z", "z")) and value[-6:-5] not in ("+", "-") \
            and what not in _naive_warned:
        _naive_warned.add(what)
        log.warning("%s %r has no UTC offset: read as UTC (RFC 3339 asks for one)", what, value[:60])
    return t


def check_time(value, what: str = "timestamp") -> datetime | None:
    """A date-time field the central system does not use: FormatViolation when it is not one."""
    return _parse(value, what)


def event_time(value, now: datetime, what: str, cp_id: str = "", offset_s: float = 0.0) -> datetime:
    """When something happened, by the station's clock, or the station's now when it cannot be.

    An unparseable timestamp is refused (FormatViolation). One outside
    [its now - :data:`PAST_WINDOW_S`, its now + :data:`FUTURE_WINDOW_S`], its now being ``now``
    plus its known clock offset ``offset_s`` [s] (:func:`station_offset_s`, as meter values are
    judged), means the station's clock is wrong (a reset clock says 0001 or 1970, a broken one
    9999): its now replaces it and a warning is logged, at most hourly a station. Judged around
    ours, a station 2 h ahead (local time written as UTC) had its start and stop replaced by our
    arrival times while its meter values kept its clock: one record in two clocks, its meter
    values stored 7200 s after its stop. None gives its now. :func:`in_our_clock` dates the
    result in ours.
    """
    t = _parse(value, what)
    its_now = now + timedelta(seconds=float(offset_s)) if offset_s else now
    if t is None:
        return its_now
    if not plausible(t, its_now):
        if hourly(cp_id, f"implausible {what}", now):
            log.warning("%s: %s %s is implausible (station clock off?); using %s (logged at most hourly)", cp_id,
                        what, value, now.isoformat())
        return its_now
    return t


def in_our_clock(stamp: datetime, now: datetime, offset_s: float = 0.0) -> datetime:
    """When an event the station stamped ``stamp`` (its clock) happened, by ours.

    Parameters
    ----------
    stamp : datetime
        Its time by the station's clock (:func:`event_time`), tz-aware.
    now : datetime
        The central system's time when its message arrived (tz-aware UTC).
    offset_s : float
        [s] The station's known clock offset, its clock minus ours (:func:`station_offset_s`).

    Returns
    -------
    datetime
        ``stamp`` less ``offset_s``, no later than ``now``: nothing a message reports happened
        after it arrived (a clock stepped forward that the estimate has not followed yet).
    """
    t = stamp - timedelta(seconds=float(offset_s)) if offset_s else stamp
    return min(t, now)


def hourly(cp_id: str, what: str, now: datetime) -> bool:
    """Whether a warning ``what`` about station ``cp_id`` may be logged at ``now``: once an hour
    (and again when ``now`` goes back); True records it as logged."""
    last = _warned_at.get((cp_id, what))
    if last is not None and 0.0 <= (now - last).total_seconds() < 3600.0:
        return False
    _warned_at[(cp_id, what)] = now
    return True


def station_offset_s(clock) -> float:
    """[s] What a station's stamps are corrected by into the central system's clock: its clock
    estimate (:attr:`ClockOffset.offset_s`, the station's clock minus ours) while usable, else 0
    (a clock a day off or split between offsets: its stamps are judged as they are)."""
    if clock is None or not getattr(clock, "usable", True):
        return 0.0
    return float(getattr(clock, "offset_s", 0.0) or 0.0)


def station_stamp(ts: datetime | None, now: datetime, offset_s: float = 0.0) -> datetime:
    """When a meter value was taken, by the station's clock.

    What orders a transaction's readings (``Transaction.last_stamp``): ordered in ours (by an
    estimate that moves by milliseconds from CALL to CALL), readings 5 ms apart swapped and were
    lost though acknowledged. The record is stored in ours (``Transaction.record_time``).

    Parameters
    ----------
    ts : datetime or None
        The reading's timestamp as the station said it (tz-aware), None when it had none usable.
    now : datetime
        The central system's time when it arrived (tz-aware UTC).
    offset_s : float
        [s] The station's known clock offset, its clock minus ours (:func:`station_offset_s`).

    Returns
    -------
    datetime
        ``ts``, else ``now`` plus ``offset_s``.
    """
    if ts is not None:
        return ts
    return now + timedelta(seconds=float(offset_s)) if offset_s else now


def meter_time(ts: datetime | None, now: datetime, cp_id: str = "", offset_s: float = 0.0) -> datetime:
    """When a meter value was taken, by the central system's clock: its timestamp ``ts`` (the
    station's clock, already within the plausible window around the station's now,
    :func:`nowblock.ocpp.meter.parse_meter_values`) less the station's known clock offset
    ``offset_s`` [s] (:func:`station_offset_s`); ``now`` when it has none or when it lies more than
    :data:`METER_AHEAD_S` after ``now`` (the station's clock runs ahead of its estimate); one more
    than :data:`METER_BEHIND_WARN_S` before ``now`` is kept and logged, at most hourly per station.
    Not corrected, a station 2 h ahead (local time written as UTC) had each stamp replaced by the
    arrival time, a value it queued 10 minutes before counted as taken now, and one a station
    30 s ahead sent kept its car fresh 30 s longer (/tmp/s37/m4/repro_f5_stamps.py)."""
    if ts is None:
        return now
    if offset_s:
        ts = ts - timedelta(seconds=float(offset_s))
    d = (ts - now).total_seconds()
    if d > METER_AHEAD_S or d < -METER_BEHIND_WARN_S:
        last = _meter_warned.get(cp_id)
        if last is None or (now - last).total_seconds() >= 3600.0 or now < last:
            _meter_warned[cp_id] = now
            log.warning("%s: meter value dated %s arrived at %s (%+.0f s): %s", cp_id, ts.isoformat(), now.isoformat(),
                        d, "the station's clock runs ahead; dated on arrival" if d > 0 else
                        "its clock runs behind or it was queued; its car counts as stale meanwhile")
    return now if d > METER_AHEAD_S else ts


def plausible(t: datetime, now: datetime) -> bool:
    """Whether ``t`` lies in the window a station's event time may lie in around ``now``."""
    d = (t - now).total_seconds()  # datetime differences never overflow
    return -PAST_WINDOW_S <= d <= FUTURE_WINDOW_S


def departure_time(value, now: datetime, cp_id: str = "") -> datetime | None:
    """A car's departure: refused if unparseable; beyond now + :data:`MAX_DEPARTURE_S` it is
    clamped to that; more than :data:`PAST_DEPARTURE_S` in the past it is ignored (None).
    Both corrections are logged."""
    t = _parse(value, "departureTime")
    if t is None:
        return None
    d = (t - now).total_seconds()
    if d > MAX_DEPARTURE_S:
        log.warning("%s: departure %s is more than %.0f days away; planning with now + %.0f days", cp_id, value,
                    MAX_DEPARTURE_S / 86400, MAX_DEPARTURE_S / 86400)
        return now + timedelta(seconds=MAX_DEPARTURE_S)
    if d < -PAST_DEPARTURE_S:
        log.warning("%s: departure %s lies in the past (car clock off?); ignored", cp_id, value)
        return None
    return t


def check_connector(connector_id, what: str = "connectorId", *, allow_zero: bool = True) -> int:
    """A connector/EVSE id in 0 (1 without ``allow_zero``) .. :data:`MAX_CONNECTOR_ID`, or
    PropertyConstraintViolation."""
    lo = 0 if allow_zero else 1
    if not isinstance(connector_id, int) or not lo <= connector_id <= MAX_CONNECTOR_ID:
        raise PropertyConstraintViolationError(
            description=f"{what} must be {lo}..{MAX_CONNECTOR_ID}", details={"cause": f"{what}={connector_id!r}"})
    return connector_id


def check_energy_wh(value, what: str) -> float:
    """A meter register [Wh]: finite and not negative, or PropertyConstraintViolation."""
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise PropertyConstraintViolationError(description=f"{what} must be a register >= 0 Wh",
                                               details={"cause": f"{what}={value!r}"})
    return x


def checked_stop(t, stop: datetime, meter_stop_wh: float | None) -> tuple[datetime, float | None]:
    """A transaction's end as it may be stored: ``(stop, meter_stop_wh)``.

    Parameters
    ----------
    t : Transaction
        The transaction that ends (its ``start`` and ``recorded_until``, our clock;
        ``meter_start_wh`` [Wh]).
    stop : datetime
        When the station says it ended, in our clock (:func:`in_our_clock`).
    meter_stop_wh : float or None
        [Wh] Its final energy register.

    Returns
    -------
    tuple
        ``stop`` no earlier than the start nor than any stored meter value of it
        (``recorded_until``), all in our clock: a stop dated before its start (a station clock gone
        back) is a WARNING naming both times and becomes the last time known of the transaction
        (its last stored meter value, else its start); one dated after its start but before its
        last stored meter value (the clock estimate moved between them) becomes that, silently.
        ``meter_stop_wh`` None (not stored) when below the start's register. Both were stored as
        they came: a session of -1 h, silently.
    """
    last = getattr(t, "recorded_until", None)
    known = max([t.start] + ([last] if last is not None else []))
    if stop < t.start:
        log.warning("%s: transaction %s stopped at %s, before its start %s: its clock went back; stored as "
                    "ended at %s (the last time known of it)", t.cp_id, t.transaction_id, stop.isoformat(),
                    t.start.isoformat(), known.isoformat())
    stop = max(stop, known)
    if meter_stop_wh is not None and t.meter_start_wh is not None and meter_stop_wh < t.meter_start_wh:
        log.warning("%s: transaction %s ended with its meter at %.0f Wh, below its start's %.0f Wh; not stored",
                    t.cp_id, t.transaction_id, meter_stop_wh, t.meter_start_wh)
        meter_stop_wh = None
    return stop, meter_stop_wh


# ---- a station's clock -------------------------------------------------------------------------
#: A station clock further off than this [s] is broken (reset to 1970, say), not skewed: no profile
#: can be placed in its time (one starting a day back would start decades after its now).
MAX_CLOCK_OFFSET_S = 86400.0
#: Offsets above this [s] are logged (profiles are then expressed in the station's clock).
CLOCK_WARN_S = 60.0
#: [s] CALLs arriving within this of a burst's first one belong to that burst (a station flushing
#: its queue sends them one round trip apart). Capped from the first, so a chatty station's
#: stream is many bursts, not one.
BURST_S = 5.0
#: [s] Samples this close agree on an offset; one this far below a CALL arriving within
#: :data:`BURST_S` after it was queued.
LATE_S = 30.0
#: The estimate stands on the samples of the last this many bursts holding a live one.
MAX_BURSTS = 6
#: [s] A sample disagreeing with the estimate expires this long after it arrived.
WINDOW_S = 1800.0
#: Samples kept of one burst: its newest stamps (the rest of a replayed queue says nothing).
BURST_KEEP = 8
#: Bursts kept (within :data:`WINDOW_S`) to find the last :data:`MAX_BURSTS` with a live sample.
KEEP_BURSTS = 64
#: An offset said in this many bursts spread over at least :data:`CONFIRM_S` [s] of arrival is
#: *confirmed*: a clock says it, not a replayed queue (whose offsets drift by the stamps' spacing
#: less the replay's pace, several seconds a message).
CONFIRM_BURSTS = 3
CONFIRM_S = 60.0
#: [s] Offsets tied in the vote further apart than this leave the clock unusable: the higher one
#: may make a TxProfile outlive the central system, the lower one expire it before its refresh
#: (half the 900 s validity the central system sends by default).
TIE_SPLIT_S = 450.0


class ClockOffset:
    """A station's clock minus the central system's [s], voted on by its recent live CALLs.

    Each CALL with a timestamp gives one sample: its latest timestamp minus the time it arrived.
    CALLs arriving within :data:`BURST_S` of a burst's first one form a burst. The samples of the
    last :data:`MAX_BURSTS` bursts holding a live one vote (below); an offset's support is how
    often the station said it (within :data:`LATE_S`), counted once per :data:`BURST_S` of
    arrival. The estimate is the median of the best-supported offset's samples; on a tie the
    higher offset wins. A sample that disagrees with the estimate expires :data:`WINDOW_S` after
    it arrived (judged by arrival, not by its stamp); one that agrees stays, so a station back
    from an outage is not judged by its replay alone. With no sample to go by the last estimate
    stays: 0 until the station's first timestamped CALL (a clock taken as right: the fail-safe
    sent after its BootNotification, which carries no time, is valid from a day back to 7 days
    ahead; a TxProfile needs a transaction, whose start carries a timestamp).

    Why a vote: a message the station queued while offline reads minutes late (ten queued
    MeterValues made a right clock -1500 s off: its TxProfiles expired on arrival and the station
    applied its fail-safe while 0 A were counted), and a station stamping some messages in local
    time marked Z reads an hour off every other minute (a rule taking no stamp older than the
    previous one pinned +3600 s when the first stamp was such a one: its TxProfiles would have
    outlived the central system by an hour). So a 2.0.1 message marked ``offline`` is no sample,
    and a sample is *queued* when a CALL arriving within :data:`BURST_S` after it carries a stamp
    more than :data:`LATE_S` newer: it does not vote, unless its offset also comes live twice in
    other bursts (then the station stamps its messages differently, and the majority decides).
    Nor does a *late* sample, stamped more than :data:`LATE_S` before a stamp received earlier
    from a sample not queued, unless its offset is confirmed (:data:`CONFIRM_BURSTS` bursts over
    :data:`CONFIRM_S`): a 1.6 replay paced at a round trip of seconds between live messages (a
    replay's offsets drift, a clock's do not). Its burst then does not count as a live one.
    A replayed queue of any length leaves one live sample, its newest. A tie goes to the higher
    offset: queued stamps are older, never newer, and a profile whose end is placed too early in
    the station's clock is dropped on arrival, one placed too late only outlives the central
    system. Tied offsets further apart than :data:`TIE_SPLIT_S` (half its stamps an hour off)
    leave the clock unusable instead (:attr:`split_s`, a WARNING at most hourly): the higher one
    would make a TxProfile outlive the central system by the hour, the lower one expire on
    arrival. A clock step is followed after 3 bursts (forward) or 4 (back).

    A timestamp more than :data:`MAX_CLOCK_OFFSET_S` off is no sample: such a clock (1970 after a
    reboot without a battery) applies no profile placed by any estimate, the fail-safe included.
    While the station's latest timestamp is one, :attr:`far_s` says how far off it is (a WARNING
    when that starts, at most hourly; INFO when it ends): the live loop then counts the station's
    cars and idle connectors at their maximum and raises an alarm (:mod:`nowblock.control.live`).
    From a BootNotification until its next timestamped CALL :attr:`stamped` is False: a reboot
    may have reset the clock, and a station that stamps none of its idle messages (1.6
    StatusNotification's timestamp is optional) would otherwise never be found 1970 before a car
    starts (the live loop counts its idle connectors at their maximum meanwhile).
    A replayed message queued more than a day ago sets it too: counting its cars at their maximum
    a moment is the safe side. It ends once a time within a day is confirmed
    (:data:`CONFIRM_BURSTS` bursts over :data:`CONFIRM_S` since the last far one): a message the
    station queued before its reset, replayed after, is one stamp within a day.
    """

    def __init__(self, bursts: int = MAX_BURSTS, window_s: float = WINDOW_S) -> None:
        self.bursts, self.window_s = int(bursts), float(window_s)
        self._obs: list[tuple[float, datetime, int]] = []  # (sample [s], arrival, burst number), in arrival order
        self._burst = 0
        self._burst_at: datetime | None = None
        self._offset = 0.0
        self._votes: list[float] = []
        self._won = False
        self.warned_s: float | None = None
        #: [s] How far off a clock more than a day off is (None: within a day, or not known).
        self.far_s: float | None = None
        self._far_warned: datetime | None = None  # when its WARNING was last logged (at most hourly)
        self._far_at = -math.inf  # [s since the epoch] when its latest far reading arrived
        #: [s] How far apart the offsets tied in the vote lie, when more than :data:`TIE_SPLIT_S`
        #: (None: no such tie).
        self.split_s: float | None = None
        #: Whether the station has stamped a CALL since its last BootNotification (True before
        #: any: a station that did not boot to this process keeps what it was sent).
        self.stamped = True
        self._split_warned: datetime | None = None

    @property
    def samples(self) -> list[float]:
        """[s] The samples the estimate stands on, in arrival order."""
        return list(self._votes)

    @property
    def offset_s(self) -> float:
        """[s] The station's clock minus the central system's (0.0 until its first timestamped CALL)."""
        return self._offset

    @property
    def usable(self) -> bool:
        """Whether profiles can be placed in the station's clock (False while :attr:`far_s` or
        :attr:`split_s` is set)."""
        return self.far_s is None and self.split_s is None

    def observe(self, payload, now: datetime, cp_id: str = "") -> None:
        """Take the latest timestamp of a CALL's ``payload`` (``timestamp``, ``meterValue[].timestamp``),
        read at ``now``, as a sample (see the class); a WARNING when the estimate, standing on two
        samples or more, leaves [-:data:`CLOCK_WARN_S`, :data:`CLOCK_WARN_S`] or moves more than that
        since the last warning, and once when the clock is found more than a day off."""
        if not isinstance(payload, dict) or payload.get("offline") is True:
            return
        if _is_boot(payload):
            self.stamped = False  # a reboot may have reset its clock: not known until it stamps again
            return
        t = latest_time(payload)
        if t is None:
            return
        self.stamped = True
        if self._burst_at is None or not 0.0 <= (now - self._burst_at).total_seconds() <= BURST_S:
            self._burst += 1
            self._burst_at = now
        d = (t - now).total_seconds()
        self._obs.append((d, now, self._burst))
        self._trim(now)
        was = self.split_s
        self._vote()
        self._split(was, now, cp_id)
        self._far(d, now, cp_id)
        self._warn(cp_id)

    def _trim(self, now: datetime) -> None:
        # A candidate expires after the window; samples agreeing with the estimate stay (among the
        # last bursts), so that a station back from an outage is not judged by its replay alone.
        first = self._burst - KEEP_BURSTS + 1
        obs = [o for o in self._obs if o[2] >= first and ((now - o[1]).total_seconds() <= self.window_s
                                                           or abs(o[0] - self._offset) <= LATE_S)]
        mine = [i for i, o in enumerate(obs) if o[2] == self._burst]
        if len(mine) > BURST_KEEP:  # a long replay: its oldest stamps go (a later one outvotes them anyway)
            drop = set(sorted(mine, key=lambda i: obs[i][0])[:len(mine) - BURST_KEEP])
            obs = [o for i, o in enumerate(obs) if i not in drop]
        self._obs = obs

    def _vote(self) -> None:
        near = [(d, at.timestamp(), b) for d, at, b in self._obs if abs(d) <= MAX_CLOCK_OFFSET_S]
        if not near:
            return  # nothing in the window to go by: the last estimate stays
        # Queued: a CALL arriving within BURST_S after it carries a stamp more than LATE_S newer.
        ats = [at for _, at, _ in near]
        burst_q = [any(d2 > d + LATE_S for d2, _, _ in near[i + 1:bisect.bisect_right(ats, at + BURST_S)])
                   for i, (d, at, _) in enumerate(near)]
        # Late: stamped more than LATE_S before a stamp received earlier from a sample not queued,
        # and its offset not confirmed (review rev1 H1 of session 36: a 1.6 replay paced at 2 s a
        # message, live StatusNotifications every 30 s between, outvoted them: -3528 s, each
        # TxProfile expired on arrival). A clock set back is followed once confirmed; a first
        # wrong stamp ahead holds the others back only that long (review R3 M1 of session 35).
        late, newest = [], -math.inf
        for i, (d, at, _) in enumerate(near):
            late.append(at + d < newest - LATE_S and not self._confirmed(d, near))
            if not burst_q[i]:
                newest = max(newest, at + d)
        # From the newest back, until the last MAX_BURSTS bursts holding a live sample are found.
        kept: list[tuple[float, float, int, bool]] = []
        live: set[int] = set()
        for i in range(len(near) - 1, -1, -1):
            d, at, b = near[i]
            if len(live) == self.bursts and b not in live:
                break
            if late[i]:
                continue  # no vote, and its burst is not one of the live ones
            q = burst_q[i]
            kept.append((d, at, b, q))
            if not q:
                live.add(b)
        if not live:
            return  # only queued or late samples: the last estimate stays
        near = [x for x in reversed(kept) if x[2] >= min(live)]

        def told(v: float, among, but: int | None = None) -> int:
            # how often the station said v [s], counted once per BURST_S of arrival (the tail of a
            # replay that runs over a burst's end is one telling, not two)
            n, last = 0, None
            for d, at, b, _ in among:
                if abs(d - v) <= LATE_S and b != but and (last is None or at - last > BURST_S):
                    n, last = n + 1, at
            return n

        free = [x for x in near if not x[3]]
        voters = [x for x in near if not x[3] or told(x[0], free, but=x[2]) >= 2]
        counts = [(told(d, voters), d) for d, *_ in voters]  # once: this runs on every stamped CALL
        support, best = max(counts)
        other = max((n for n, d in counts if abs(d - best) > LATE_S), default=0)
        self._votes = [d for d, *_ in voters if abs(d - best) <= LATE_S]
        self._offset = float(statistics.median(self._votes))
        self._won = support > other  # not a tie: the estimate may be warned about
        tied = [d for n, d in counts if n == support]
        spread = max(tied) - min(tied)
        self.split_s = spread if not self._won and spread > TIE_SPLIT_S else None

    @staticmethod
    def _confirmed(v: float, among) -> bool:
        # v [s] said (within LATE_S) in CONFIRM_BURSTS bursts over CONFIRM_S of arrival or more
        ats = [at for d, at, _ in among if abs(d - v) <= LATE_S]
        return (len({b for d, _, b in among if abs(d - v) <= LATE_S}) >= CONFIRM_BURSTS
                and max(ats) - min(ats) >= CONFIRM_S)

    def _far(self, d: float, now: datetime, cp_id: str) -> None:
        # d [s]: the station's latest reading of its clock (kept even when its burst's cap drops it)
        was = self.far_s
        if abs(d) > MAX_CLOCK_OFFSET_S:
            self.far_s, self._far_at = d, now.timestamp()
        elif was is not None and self._confirmed(d, [(d2, at.timestamp(), b) for d2, at, b in self._obs
                                                      if at.timestamp() >= self._far_at
                                                      and abs(d2) <= MAX_CLOCK_OFFSET_S]):
            # Within a day again once confirmed since its last far reading: a single stamp may be
            # a message it queued before its reset (review rev1 of session 36: one such cleared
            # the flag, and the station's cars were trusted, until its next CALL).
            self.far_s = None
        if was is None and self.far_s is not None:
            hourly = self._far_warned is None or not 0.0 <= (now - self._far_warned).total_seconds() < 3600.0
            self._far_warned = now if hourly else self._far_warned
            log.log(logging.WARNING if hourly else logging.INFO,
                    "%s: station timestamp %+.1f days off the central system's (its clock reset, e.g. to 1970, or "
                    "a message queued that long): no profile can be placed in such a clock, so none is taken to "
                    "be in force; its cars and idle connectors count at their maximum until it sends a time "
                    "within a day (set its clock: NTP)", cp_id, self.far_s / 86400)
        elif was is not None and self.far_s is None:
            log.info("%s: station clock within a day of the central system's again (%+.0f s)", cp_id, self._offset)

    def _split(self, was: float | None, now: datetime, cp_id: str) -> None:
        if was is None and self.split_s is not None:
            hourly = self._split_warned is None or not 0.0 <= (now - self._split_warned).total_seconds() < 3600.0
            self._split_warned = now if hourly else self._split_warned
            log.log(logging.WARNING if hourly else logging.INFO,
                    "%s: station timestamps disagree, as often %.0f s apart (some in local time marked Z?): "
                    "no profile can be placed in its clock, so none is taken to be in force; its cars and idle "
                    "connectors count at their maximum until one offset wins (set its clock: NTP)",
                    cp_id, self.split_s)
        elif was is not None and self.split_s is None:
            log.info("%s: station timestamps agree again (%+.0f s)", cp_id, self._offset)

    def _warn(self, cp_id: str) -> None:
        off = self.offset_s
        if abs(off) > CLOCK_WARN_S and (self.warned_s is None or abs(off - self.warned_s) > CLOCK_WARN_S):
            if len(self._votes) < 2 or not self._won:
                return  # one sample, or a tie (its stamps disagree): not yet a change worth a warning
            self.warned_s = off
            log.warning("%s: station clock is %+.0f s off the central system's: its profiles carry its own "
                        "time; set its clock (NTP)", cp_id, off)
        elif abs(off) <= CLOCK_WARN_S and self.warned_s is not None:
            self.warned_s = None
            log.info("%s: station clock back within %.0f s (%+.0f s)", cp_id, CLOCK_WARN_S, off)


def _is_boot(payload: dict) -> bool:
    # A BootNotification's payload (1.6: vendor and model; 2.0.1: the station and a reason): no
    # other CALL carries these (the clock object sees payloads, not actions).
    return ("chargePointVendor" in payload and "chargePointModel" in payload) or (
        isinstance(payload.get("chargingStation"), dict) and "reason" in payload)


def latest_time(payload) -> datetime | None:
    """The latest well-formed timestamp at the top of a CALL payload or in its meter values (None: none)."""
    if not isinstance(payload, dict):
        return None
    values = [payload.get("timestamp")]
    mv = payload.get("meterValue")
    if isinstance(mv, list):
        values += [m.get("timestamp") for m in mv[:64] if isinstance(m, dict)]
    out = None
    for v in values:
        if not isinstance(v, str) or not _DATE_TIME.fullmatch(v):
            continue
        try:
            t = parse_time(v)
        except (ValueError, TypeError, OverflowError):
            continue
        out = t if out is None or t > out else out
    return out
