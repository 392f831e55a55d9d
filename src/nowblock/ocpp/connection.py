"""What both protocol versions share on the central-system side of one WebSocket.

:class:`CsmsConnection` is mixed into the ``ocpp`` library's ``ChargePoint`` of each
version. It replaces ``route_message`` because the library only logs frames it cannot parse
(not JSON, not an array, an unknown message type): here every such frame is answered with
the CALLERROR the protocol defines, where one is allowed (never in reply to a CALLRESULT or
CALLERROR), logged, and the connection keeps serving. It also runs the work a handler
deferred (sending a profile after a BootNotification, say) only after the handler's
response went out, as tracked tasks whose failures are logged: a handler must never await a
CALL of its own, because the same loop has to read that CALL's answer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from ocpp import charge_point as _lib
from jsonschema.exceptions import ValidationError as _SchemaError
from ocpp.exceptions import FormatViolationError, OCPPError, PropertyConstraintViolationError
from ocpp.messages import Call, CallError, CallResult, MessageType
from ocpp.v16.enums import Action as _Action16
from ocpp.v201.enums import Action as _Action201
from websockets.exceptions import ConnectionClosed

from nowblock.ocpp import edge
from nowblock.ocpp import profiles as pr

if TYPE_CHECKING:  # pragma: no cover
    from nowblock.ocpp.server import CentralSystem

log = logging.getLogger(__name__)

# Error codes spelled as each version spells them (1.6 keeps its historical typos).
_CODES_16 = {"FormatViolation": "FormationViolation", "OccurrenceConstraintViolation": "OccurenceConstraintViolation"}
_CODES_201 = {"FormationViolation": "FormatViolation", "OccurenceConstraintViolation": "OccurrenceConstraintViolation"}
UNKNOWN_ID = "-1"  # OCPP-J 2.0.1: the MessageId to use when the incoming one cannot be read
MAX_ID_LEN = 36  # OCPP-J (1.6 and 2.0.1): a MessageId is a string of at most 36 characters
# Every action of each version, both directions: one outside these is "not known by receiver"
# (NotImplemented); a known one without a handler here is "recognized but not supported".
_ACTIONS_16 = frozenset(a.value for a in _Action16)
_ACTIONS_201 = frozenset(a.value for a in _Action201)


class CallErrorReceived(Exception):
    """The charger answered a CALL with a CALLERROR (``code``, ``description``)."""

    def __init__(self, code: str, description: str = "") -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class CsmsConnection:
    """Mixin for ``ocpp.v16.ChargePoint`` / ``ocpp.v201.ChargePoint`` on the central side."""

    version: str = ""
    _ocpp_version: str

    def __init__(self, cp_id: str, ws, central: "CentralSystem") -> None:
        super().__init__(cp_id, ws, response_timeout=central.response_timeout_s)  # type: ignore[call-arg]
        self.central = central
        self.state = central.state
        self._deferred: list[Callable[[], Awaitable[None]]] = []
        self.frame_errors = 0
        self.stray_responses = 0
        # Ids of our own CALLs not yet answered, oldest first (bounded: a CALL refused by schema
        # validation before it was sent never gets an answer and is forgotten eventually).
        self._awaited: dict[str, None] = {}
        self._unique_id_generator = self._new_call_id  # type: ignore[assignment]

    def _new_call_id(self) -> str:
        uid = str(uuid.uuid4())
        self._awaited[uid] = None
        while len(self._awaited) > 256:
            del self._awaited[next(iter(self._awaited))]
        return uid

    async def _get_specific_response(self, unique_id, timeout):
        """The answer to our CALL ``unique_id`` (a loop: the library recursed once per foreign
        answer and a station could exhaust the stack with a few thousand of them)."""
        self._awaited[unique_id] = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                async with asyncio.timeout(left):
                    response = await self._response_queue.get()  # type: ignore[attr-defined]
                if response.unique_id == unique_id:
                    return response
                log.warning("%s: answer %.40r arrived after its call gave up; ignored", self.id, response.unique_id)
        finally:
            self._awaited.pop(unique_id, None)

    # ---- deferred work ----------------------------------------------------------------------
    def defer(self, fn: Callable[[], Awaitable[None] | None]) -> None:
        """Call ``fn()`` once the current handler's response has been sent; a coroutine it
        returns runs as a tracked task. (Events such as a 1.6 start are published this way, so
        no one sends a TxProfile before the charger has learnt its transaction id.)"""
        self._deferred.append(fn)

    def _run_deferred(self) -> None:
        jobs, self._deferred = self._deferred, []
        for fn in jobs:
            try:
                res = fn()
            except Exception:
                log.exception("%s: deferred work failed", self.id)
                continue
            if asyncio.iscoroutine(res):
                self.central.spawn(res, name=f"{self.id}:deferred")

    # ---- framing ----------------------------------------------------------------------------
    def _code(self, code: str) -> str:
        return (_CODES_16 if self._ocpp_version == "1.6" else _CODES_201).get(code, code)

    async def _send_error(self, unique_id: str, code: str, description: str, details: dict | None = None) -> None:
        self.frame_errors += 1
        self.state.stations[self.id].frame_errors += 1
        err = CallError(unique_id, self._code(code), description, details or {})
        await self._send(err.to_json())  # type: ignore[attr-defined]

    def _check_frame(self, raw) -> tuple[str, str, str] | list:
        """The parsed frame, or (unique id, error code, description) when ``raw`` is no valid
        OCPP-J CALL/CALLRESULT/CALLERROR or carries what :func:`.edge.parse_frame` refuses;
        the id is "" for a broken response frame (those are logged, never answered)."""
        v16 = self._ocpp_version == "1.6"
        rpc = "FormatViolation" if v16 else "RpcFrameworkError"
        try:
            msg = edge.parse_frame(raw)
        except edge.FrameError as exc:
            if exc.message_type in (MessageType.CallResult, MessageType.CallError):
                return "", rpc, exc.why
            uid = exc.unique_id or UNKNOWN_ID
            code = rpc if exc.kind == "json" else "FormatViolation"
            return uid, code, exc.why
        if not isinstance(msg, list) or len(msg) < 2:
            return UNKNOWN_ID, rpc, "message is not an OCPP-J array [type, id, ...]"
        uid = msg[1] if isinstance(msg[1], str) and msg[1] else UNKNOWN_ID
        kind = msg[0]
        if kind not in (MessageType.Call, MessageType.CallResult, MessageType.CallError) or isinstance(kind, bool):
            return uid, ("ProtocolError" if v16 else "MessageTypeNotSupported"), f"unknown message type {kind!r}"
        if kind == MessageType.Call:
            if len(msg) != 4 or not isinstance(msg[2], str) or not isinstance(msg[3], dict) or uid == UNKNOWN_ID:
                return uid, rpc, "a CALL is [2, \"<id>\", \"<Action>\", {payload}]"
            if len(uid) > MAX_ID_LEN:  # not a valid RPC request; answered with its own id, which is readable
                return uid, rpc, f"a message id has at most {MAX_ID_LEN} characters, not {len(uid)}"
        elif kind == MessageType.CallResult and (len(msg) != 3 or not isinstance(msg[2], dict)):
            return "", rpc, "malformed CALLRESULT"
        elif kind == MessageType.CallError and len(msg) != 5:
            return "", rpc, "malformed CALLERROR"
        return msg

    async def route_message(self, raw_msg) -> None:
        """Route one frame; answer what cannot be parsed; never raise (the loop must live on)."""
        try:
            frame = self._check_frame(raw_msg)
            if isinstance(frame, tuple):
                uid, code, why = frame
                log.warning("%s: bad frame (%s): %.200r", self.id, why, raw_msg)
                if uid:
                    await self._send_error(uid, code, why)
                else:
                    self.frame_errors += 1
                    self.state.stations[self.id].frame_errors += 1
                return
            # Built from the parsed frame: the library's unpack() would parse the JSON again.
            kind = frame[0]
            if kind == MessageType.Call:
                await self._route_call(Call(*frame[1:]))
            elif not isinstance(frame[1], str) or frame[1] not in self._awaited:
                # An answer to nothing we wait for (late, repeated, invented): dropped here, so it
                # can neither pile up in the library's queue nor be taken for another call's answer.
                self.stray_responses += 1
                self.state.stations[self.id].stray_responses += 1
                if self.stray_responses in (1, 10, 100) or self.stray_responses % 1000 == 0:
                    log.warning("%s: %d answer(s) to no pending call dropped (latest id %.40r)", self.id,
                                self.stray_responses, frame[1])
            elif kind == MessageType.CallResult:
                del self._awaited[frame[1]]  # one answer per call: a repeated one is stray
                self._response_queue.put_nowait(CallResult(*frame[1:]))  # type: ignore[attr-defined]
            else:
                del self._awaited[frame[1]]
                self._response_queue.put_nowait(CallError(*frame[1:]))  # type: ignore[attr-defined]
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("%s: failed to handle frame %.200r", self.id, raw_msg)

    async def _route_call(self, msg: Call) -> None:
        try:
            observe_clock(self.state, self.id, msg.payload)
            # OCPP-J (1.6 Table 7, 2.0.1 Part 4 §4.2.3): an action the receiver does not know is
            # NotImplemented, one it knows but does not support NotSupported. The ocpp library
            # answers the other way round (its two error classes swap the descriptions), so both
            # are answered here before it sees them.
            if msg.action not in (_ACTIONS_16 if self._ocpp_version == "1.6" else _ACTIONS_201):
                code, why, cause = "NotImplemented", "Requested Action is not known by receiver", "unknown action"
            elif "_on_action" not in self.route_map.get(msg.action, {}):  # type: ignore[attr-defined]
                code, why = "NotSupported", "Requested Action is recognized but not supported by the receiver"
                cause = "not handled by this central system"
            else:
                await self._handle_call(msg)  # type: ignore[attr-defined]
                return
            log.warning("%s: %.60r (%s) answered with %s", self.id, msg.action, msg.unique_id, code)
            await self._send_error(msg.unique_id, code, why, {"cause": f"{cause}: {msg.action[:60]!r}"})
        except OCPPError as exc:  # from the schema check or a handler's refusal: one line, no traceback
            log.warning("%s: %s %s answered with %s: %s", self.id, msg.action, msg.unique_id, self._code(exc.code),
                        exc.details.get("cause", exc.description))
            details = {k: v for k, v in exc.details.items() if k != "ocpp_message"}
            await self._send_error(msg.unique_id, exc.code, exc.description, details)
        except ConnectionClosed:
            raise
        except Exception:  # a bug of ours: the charger still gets an answer
            log.exception("%s: %s handler failed", self.id, msg.action)
            await self._send_error(msg.unique_id, "InternalError", "handler failed")
        finally:
            self._run_deferred()

    async def _handle_call(self, msg: Call) -> None:
        """Validate, run the handler, answer: the ``ocpp`` library's ``_handle_call`` without its
        catch-all. The library caught every exception of a handler, logged it at ERROR with a
        traceback (each PropertyConstraintViolation of a broken frame, too) and answered with the
        code as raised (1.6 got 2.0.1's spelling); here they reach :meth:`_route_call`, which logs
        an OCPPError as one WARNING line, answers it in the version's spelling, and keeps the
        traceback and InternalError for real bugs. Only the action's ``@on`` handler is run (this
        central system registers no ``@after`` hooks)."""
        handlers = self.route_map[msg.action]  # type: ignore[attr-defined]
        check = not handlers.get("_skip_schema_validation", False)
        if check:
            try:
                await _lib.validate_payload(msg, self._ocpp_version)
            except FormatViolationError as exc:
                raise _value_error(exc) from None
        response = handlers["_on_action"](**_lib.camel_to_snake_case(msg.payload))
        if inspect.isawaitable(response):
            response = await response
        payload = _lib.snake_to_camel_case(_lib.remove_nones(_lib.serialize_as_dict(response)))
        result = msg.create_call_result(payload)
        if check:
            await _lib.validate_payload(result, self._ocpp_version)
        await self._send(result.to_json())  # type: ignore[attr-defined]

    # ---- outgoing calls (uniform over both versions) ------------------------------------------
    async def _call(self, payload, *, validate: bool = True):
        """``call`` that raises :class:`CallErrorReceived` on a CALLERROR (any code, even unknown ones).

        ``validate=False`` skips the library's JSON-schema check of the request and the answer:
        only for requests the central system builds itself and tests against the official
        schemas (charging profiles), on the hot path of a dispatch (the check was a fifth of the
        server's time dispatching to 2,000 stations, measured); the caller checks the answer.
        """
        try:
            return await self.call(payload, suppress=False, skip_schema_validation=not validate)  # type: ignore[attr-defined]
        except OCPPError as exc:
            raise CallErrorReceived(exc.code, str(exc.description)) from exc
        except Exception as exc:
            if type(exc).__name__ == "UnknownCallErrorCodeError":
                raise CallErrorReceived("Unknown", str(exc)) from exc
            raise


def observe_clock(state, cp_id: str, payload) -> None:
    """Give a station's CALL ``payload`` (or ``{"timestamp": its answered time}``) to its clock
    estimate (``Station.clock``, :class:`~nowblock.ocpp.edge.ClockOffset`), now.

    The profiles it holds carry its time: when the estimate moves by ``m`` [s], they move by
    ``-m`` in ours (``LiveState`` keeps them in ours). A forward clock step followed left the
    TxProfiles sent before it counted in force where the station had dropped them (21 of 39 s
    after a +600 s step, /tmp/s37/h1/repro5_forward_step.py). A stamp more than ``LATE_S``
    ahead of the estimate sets ``Station.clock_ahead_s`` until the estimate follows or a stamp
    agrees with it: the profiles are judged by the station's clock meanwhile
    (``LiveState.applied_limit_a``). A move over ``LATE_S``, or such a step seen or ended, is
    published as a ``clock`` event: its cars are then sent their limits again."""
    st, now = state.stations[cp_id], state.clock()
    before, ahead = st.clock.offset_s, st.clock_ahead_s
    st.clock.observe(payload, now, cp_id)
    moved = st.clock.offset_s - before
    if moved:
        d = timedelta(seconds=-moved)
        st.profiles = [pr.shifted(p, d) for p in st.profiles]
        st.unanswered = [pr.shifted(p, d) for p in st.unanswered]
    t = edge.latest_time(payload) if isinstance(payload, dict) and payload.get("offline") is not True else None
    if t is not None and abs((t - now).total_seconds()) <= edge.MAX_CLOCK_OFFSET_S:
        # Its latest stamp ahead of the estimate: a forward step not followed yet (a queued one is
        # older, never ahead); ended by a stamp that agrees, or once the estimate follows.
        a = (t - now).total_seconds() - st.clock.offset_s
        st.clock_ahead_s = a if a > edge.LATE_S else None
    if abs(moved) > edge.LATE_S or (ahead is None) != (st.clock_ahead_s is None):
        state.emit("clock", cp_id, moved_s=moved, ahead_s=st.clock_ahead_s)


#: The statuses a SetChargingProfile answer may carry (both versions).
PROFILE_STATUSES = frozenset({"Accepted", "Rejected", "NotSupported"})


#: Schema keywords a well-formed field of the right type breaks by its value: OCPP-J (1.6 and
#: 2.0.1) calls that PropertyConstraintViolation ("at least one field contains an invalid
#: value"); the ``ocpp`` library answers them FormatViolation.
_VALUE_KEYWORDS = frozenset({"enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                             "multipleOf"})


def _value_error(exc: FormatViolationError) -> OCPPError:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, _SchemaError) and cause.validator in _VALUE_KEYWORDS:
        where = "/".join(str(p) for p in cause.absolute_path) or "payload"
        return PropertyConstraintViolationError(details={"cause": f"{where}: {cause.message}"[:300]})
    return exc


def profile_status(res) -> str:
    """The status of a SetChargingProfile answer received without the library's schema check;
    anything else than the statuses the schemas allow is a FormationViolation (raised)."""
    status = getattr(res, "status", None)
    if not isinstance(status, str) or status not in PROFILE_STATUSES:
        raise CallErrorReceived("FormationViolation", f"SetChargingProfile answer with status {status!r}")
    return status
