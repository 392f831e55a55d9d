"""The central system: WebSocket server, one OCPP connection per charging station, and the
async API a controller uses (limits, default profiles, composite schedules, events).

Identities come from the URL path (``ws://host:port/<anything>/<cp_id>``); the handshake
refuses identities the site does not list (404) and, for a charging point with a
``password_hash``, a missing or wrong HTTP Basic password (401, OCPP security profile 1).
Subprotocols ``ocpp2.0.1`` and ``ocpp1.6`` are negotiated in the charger's order of
preference; a charger that offers none is taken as 1.6 (older firmware omits the header).
Give an ``ssl.SSLContext`` for TLS (security profile 2).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic

from nowblock.ocpp import dispatch, edge
from nowblock.ocpp import profiles as pr
from nowblock.ocpp.auth import verify_password
from nowblock.ocpp.connection import CallErrorReceived, observe_clock
from nowblock.ocpp.events import Subscription
from nowblock.ocpp.state import DispatchRecord, LiveState
from nowblock.ocpp.v16 import ChargePoint16
from nowblock.ocpp.v201 import ChargePoint201
from nowblock.block.site import Site

log = logging.getLogger(__name__)
SUBPROTOCOLS = ("ocpp2.0.1", "ocpp1.6")


def identity_from_path(path: str) -> str:
    """The charging station identity: the last non-empty segment of the URL path, unquoted."""
    parts = [p for p in urlsplit(path).path.split("/") if p]
    return unquote(parts[-1]) if parts else ""


class CentralSystem:
    """OCPP 1.6J / 2.0.1 central system for one :class:`~nowblock.site.Site`.

    Times in seconds: ``heartbeat_s`` (told to chargers at boot), ``response_timeout_s``
    (waiting for a charger's answer), ``tx_validity_s`` (life of a TxProfile; refresh before),
    ``default_validity_s`` (life of TxDefault and station-maximum profiles), ``backoff_s``
    (first pause between retries, doubling). ``failsafe_at_boot`` sends every station that
    boots a TxDefaultProfile with :func:`~nowblock.ocpp.profiles.failsafe_current_a`;
    ``ask_currents`` then asks it to sample Current.Import in its meter values too (1.6's default
    samples only the energy register), keeping what it samples already.
    The central system does no control itself: a controller (``nowblock.control``) uses
    its API. ``port=0`` picks a free port
    (see :attr:`port` after :meth:`start`). ``clock`` (UTC now) replaces the wall clock for
    profiles, timestamps and snapshots, e.g. to run a simulated day faster than real time.
    ``refusal_memory_s`` [s]: how long a profile purpose a station Rejected is not offered
    again (NotSupported/NotImplemented: until it reboots; see ``Station.refusals``).
    ``max_frame_bytes``: a bigger frame closes the connection (1009) before it is buffered.
    """

    def __init__(
        self, site: Site, *, host: str = "127.0.0.1", port: int = 9000, ssl_context: ssl.SSLContext | None = None,
        heartbeat_s: int = 300, response_timeout_s: float = 10.0, tx_validity_s: int = 900,
        default_validity_s: int = 7 * 86400, retries: int = 2, backoff_s: float = 0.5,
        failsafe_at_boot: bool = True, probe_rate_unit: bool = True, ask_currents: bool = True,
        state: LiveState | None = None, ping_interval_s: float | None = 60.0,
        clock=None, refusal_memory_s: float = 900.0, max_frame_bytes: int = edge.MAX_FRAME_BYTES,
    ) -> None:
        self.site = site
        self.host, self._port, self.ssl_context = host, port, ssl_context
        self.heartbeat_s, self.response_timeout_s = heartbeat_s, response_timeout_s
        self.tx_validity_s, self.default_validity_s = tx_validity_s, default_validity_s
        self.retries, self.backoff_s = retries, backoff_s
        self.failsafe_at_boot, self.probe_rate_unit = failsafe_at_boot, probe_rate_unit
        self.ask_currents = bool(ask_currents)
        self.ping_interval_s = ping_interval_s
        self.max_frame_bytes = int(max_frame_bytes)
        self.state = state or (LiveState(site, clock=clock) if clock is not None else LiveState(site))
        self.refusal_memory_s = float(refusal_memory_s)
        self.state.refusal_memory_s = self.refusal_memory_s
        self.failsafe_a = dict(zip(site.charge_point_ids, pr.failsafe_current_a(site).tolist()))
        self._connections: dict[str, ChargePoint16 | ChargePoint201] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        #: (cp_id, connector, transaction) -> a re-send is pending; True: a phase change came since
        #: it read the car's phases, so it goes out once more (see _resend_limit).
        self._resending: dict[tuple[str, int, str], bool] = {}
        self._server = None
        self.state.add_listener(self._on_event)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> "CentralSystem":
        """Start listening."""
        self._server = await serve(
            self._handle, self.host, self._port, subprotocols=list(SUBPROTOCOLS),
            select_subprotocol=self._select_subprotocol, process_request=self._process_request,
            ssl=self.ssl_context, ping_interval=self.ping_interval_s, compression=None,
            max_size=self.max_frame_bytes, max_queue=16,
            # A charger that dropped off the network never answers the close frame: without a
            # short wait a SIGTERM took 10 s (the library's default) per such charger.
            close_timeout=2.0,
        )
        log.info("central system for %s listening on %s", self.site.name, self.url(""))
        return self

    async def stop(self) -> None:
        """Close every connection and stop serving; pending tasks are cancelled."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> "CentralSystem":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Run until cancelled."""
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            return self._port
        return next(iter(self._server.sockets)).getsockname()[1]

    def url(self, cp_id: str) -> str:
        """``ws(s)://host:port/<cp_id>``."""
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{self.host}:{self.port}/{cp_id}"

    def spawn(self, coro: Coroutine, name: str | None = None) -> asyncio.Task:
        """Run ``coro`` as a tracked task whose failure is logged (never silently dropped)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # ---- handshake ----------------------------------------------------------------------------
    def _select_subprotocol(self, connection: ServerConnection, offered):
        if not offered:
            return None
        for proto in offered:  # the charger lists its preference first
            if proto in SUBPROTOCOLS:
                return proto
        raise NegotiationError(f"no supported OCPP version among {list(offered)}; expected one of {SUBPROTOCOLS}")

    async def _process_request(self, connection: ServerConnection, request):
        cp_id = identity_from_path(request.path)
        if cp_id not in self.state.stations:
            log.warning("refused unknown identity %r from %s", cp_id, connection.remote_address)
            return connection.respond(HTTPStatus.NOT_FOUND, f"unknown charging station {cp_id!r}\n")
        expected = self.site.charge_point(cp_id).password_hash
        if expected:
            ok = False
            header = request.headers.get("Authorization")
            if header:
                try:
                    user, password = parse_authorization_basic(header)
                except Exception:
                    user, password = "", ""
                # scrypt is deliberately slow: keep it off the event loop.
                ok = user == cp_id and await asyncio.to_thread(verify_password, password, expected)
            if not ok:
                log.warning("refused %s: missing or wrong password", cp_id)
                resp = connection.respond(HTTPStatus.UNAUTHORIZED, "authentication required\n")
                resp.headers["WWW-Authenticate"] = build_www_authenticate_basic(f"nowblock {cp_id}")
                return resp
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        cp_id = identity_from_path(ws.request.path)
        version = "2.0.1" if ws.subprotocol == "ocpp2.0.1" else "1.6"
        cls = ChargePoint201 if version == "2.0.1" else ChargePoint16
        conn = cls(cp_id, ws, self)
        old = self._connections.get(cp_id)
        self._connections[cp_id] = conn
        if old is not None:  # the newest connection of an identity wins (the charger reconnected)
            log.info("%s: new connection replaces the old one", cp_id)
            self.spawn(old._connection.close(), name=f"{cp_id}:close-old")
        self.state.on_connect(cp_id, version)
        log.info("%s connected (OCPP %s)", cp_id, version)
        try:
            await conn.start()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: connection handler failed", cp_id)
        finally:
            if self._connections.get(cp_id) is conn:
                del self._connections[cp_id]
                self.state.on_disconnect(cp_id)
                log.info("%s disconnected", cp_id)

    # ---- hooks the handlers call --------------------------------------------------------------
    def authorize(self, cp_id: str, id_tag: str) -> str:
        """Authorization status for ``id_tag`` (every tag is accepted: the block has no tag list)."""
        return "Accepted"

    async def after_boot(self, cp_id: str) -> None:
        """After a BootNotification: learn the rate unit, then install the fail-safe TxDefault."""
        conn = self.connection(cp_id)
        if conn is None:
            return
        st = self.state.station(cp_id)
        if self.probe_rate_unit:
            try:
                st.rate_unit = await conn.probe_rate_unit()
            except CallErrorReceived as exc:  # many chargers do not answer this; amperes it is
                log.info("%s: rate unit unknown (%s); using A", cp_id, exc.code)
                self.state.on_refusal(cp_id, "GetConfiguration" if conn.version == "1.6" else "GetVariables", exc.code)
            except Exception as exc:
                log.info("%s: rate unit unknown (%r); using A", cp_id, exc)
        if self.failsafe_at_boot:
            st.failsafe = await self.set_default_profile(cp_id, self.failsafe_a[cp_id], connector_id=0)
            if st.failsafe.purpose is None:
                log.warning("%s: fail-safe TxDefaultProfile of %.1f A not installed (%s)", cp_id,
                            self.failsafe_a[cp_id], st.failsafe.attempts)
        await self._ask_clock(cp_id)  # before the currents: its idle connectors wait for it
        if self.ask_currents:  # after the fail-safe: that one matters first
            await self._ask_currents(cp_id)

    async def _ask_clock(self, cp_id: str) -> None:
        """Ask a station that has stamped no CALL since its boot for its time (1.6: a triggered
        MeterValues; 2.0.1: ClockCtrlr.DateTime, taken as a sample of its clock on arrival).
        One that never stamps its idle messages (1.6 StatusNotification's timestamp is
        optional) got no idle default, and its idle connectors were counted at their maximum,
        until a car started there (/tmp/s37/h1/repro4_unstamped_idle.py). Run from a task
        (``after_boot``): a CALL awaited inside a handler would block its connection."""
        conn = self.connection(cp_id)
        st = self.state.station(cp_id)
        if conn is None or st.clock.stamped or not hasattr(conn, "ask_clock"):
            return
        try:
            value = await conn.ask_clock()
        except CallErrorReceived as exc:
            log.info("%s: station time not available (%s)", cp_id, exc.code)
            return
        except Exception as exc:  # noqa: BLE001 - its clock stays unknown, as before asking
            log.info("%s: station time not available (%r)", cp_id, exc)
            return
        if value is not None:
            observe_clock(self.state, cp_id, {"timestamp": value})

    async def _ask_currents(self, cp_id: str) -> None:
        conn = self.connection(cp_id)
        get = "GetConfiguration" if conn is not None and conn.version == "1.6" else "GetVariables"
        if conn is None or (self.state.station(cp_id).refusals.get(get) and
                            self.state.station(cp_id).refusals[get].permanent):
            return  # it does not answer these (until it reboots)
        try:
            status = await conn.ensure_measurand("Current.Import")
        except CallErrorReceived as exc:  # not remembered as a refusal: it concerns no limit
            log.info("%s: cannot ask for Current.Import in its meter values (%s)", cp_id, exc.code)
            return
        except Exception as exc:
            log.info("%s: cannot ask for Current.Import in its meter values (%r)", cp_id, exc)
            return
        if status not in ("present", "Accepted"):
            log.warning("%s: does not sample Current.Import (%s): a car over its limit may go unseen", cp_id, status)

    async def after_stop(self, cp_id: str, connector_id: int) -> None:
        """After a transaction ended: drop a connector TxDefault a fallback left behind.

        It waits for the station's limit change in flight (the station lock): a fallback whose
        answer was pending as the car left was installed after a look that found nothing to clear,
        and the idle connector applied the departed car's 16 A for the profile's life (900 s)."""
        async with self.station_lock(cp_id):
            st = self.state.station(cp_id)
            pid = pr.TX_DEFAULT_ID_BASE + connector_id
            conn = self.connection(cp_id)
            if conn is None or not any(p.id == pid and p.connector_id == connector_id for p in st.profiles):
                return
            try:
                if await conn.clear_profiles(profile_id=pid) in ("Accepted", "Unknown"):
                    self.state.on_profiles_cleared(cp_id, profile_id=pid)
            except Exception as exc:
                log.warning("%s: could not clear fallback TxDefault %s: %r", cp_id, pid, exc)

    def _on_event(self, ev) -> None:
        # A car at a station taking watts whose phases its meter just showed: its limit went
        # out as the power of one phase (numberPhases its planned count); the same limit again
        # is now the power of all of them, at once rather than at the next refresh (an outside
        # test: a 3-phase car at 32 A drew 10.7 A per phase for the profile's half-life).
        # A car whose phases fell (3 known, then 1) gets its limit again as the power of the phases
        # left, or its phase would take all of the power planned for three.
        if ev.kind != "meter" or not (int(ev.data.get("phases_known") or 0) >= 2 or ev.data.get("phases_down")):
            return
        if ev.transaction_id is None or self.state.station(ev.cp_id).dispatch.get(ev.connector_id) is None:
            return
        key = (ev.cp_id, ev.connector_id, str(ev.transaction_id))
        if key in self._resending:
            # One is pending: if it has read the car's phases already (on the wire), it goes out
            # again after; dropped, a car back on 3 phases kept the power of 1 (3.33 A for 10 A).
            self._resending[key] = True
            return
        try:
            task = self.spawn(self._resend_until_current(key), name=f"phases-known-{ev.cp_id}")
        except RuntimeError:  # no running loop (a state replayed offline): the next step sends it
            return
        self._resending[key] = False
        task.add_done_callback(lambda t: t.cancelled() and self._resending.pop(key, None))  # never started

    async def _resend_until_current(self, key: tuple[str, int, str], rounds: int = 3) -> None:
        # A bound on rounds: a station whose meter flips phases every value must not keep the
        # lock busy; the next flagged meter value starts again. The key goes with no await after
        # the last look, so no event falls between it and the next re-send.
        try:
            for _ in range(rounds):
                await self._resend_limit(*key)
                if not self._resending.get(key):
                    return
        finally:
            self._resending.pop(key, None)

    async def _resend_limit(self, cp_id: str, connector_id: int, transaction_id) -> DispatchRecord | None:
        # The limit to send again is read under the station lock: read when the meter value came,
        # a step's lower limit then on the wire was overwritten by the older, higher one after it
        # (24 A applied where the step had sent 6 A, and booked as sent).
        async with self.station_lock(cp_id):
            key = (cp_id, connector_id, str(transaction_id))
            if key in self._resending:
                self._resending[key] = False  # the car's phases are read from here on
            rec = self.state.station(cp_id).dispatch.get(connector_id)
            t = self.state.running_on(cp_id, connector_id)
            if rec is None or rec.purpose is None or t is None or str(t.transaction_id) != str(transaction_id):
                return None
            if t.known_at is not None and rec.time < t.known_at:
                # Decided for the connector's previous car, not this one. Both times by our clock:
                # against the station's start a clock 120 s ahead lost the re-send (5.33 A per phase
                # applied for 16 A).
                return None
            return await dispatch.set_limit_locked(self, cp_id, connector_id, rec.wanted_a,
                                                   transaction_id=transaction_id)

    # ---- the controller's API -----------------------------------------------------------------
    def connection(self, cp_id: str) -> ChargePoint16 | ChargePoint201 | None:
        """The live connection of ``cp_id``, or None when it is offline."""
        return self._connections.get(cp_id)

    def station_lock(self, cp_id: str) -> asyncio.Lock:
        """Serializes limit changes per station."""
        if cp_id not in self._locks:
            self._locks[cp_id] = asyncio.Lock()
        return self._locks[cp_id]

    def events(self, maxsize: int = 10_000) -> Subscription:
        """A new stream of state events (``async for ev in cs.events(): ...``; ``close()`` it)."""
        return self.state.subscribe(maxsize)

    async def set_limit(self, cp_id: str, connector_id: int, current_a: float, *, validity_s: int | None = None,
                        retries: int | None = None, backoff_s: float | None = None,
                        verify: bool = False, transaction_id: str | int | None = None) -> DispatchRecord:
        """Limit a connector/EVSE to ``current_a`` [A per phase] for ``validity_s`` [s]: TxProfile
        for its running transaction, falling back to TxDefault, then the station maximum, all
        as short-lived as the TxProfile; with ``transaction_id``, nothing is sent once that
        transaction no longer runs there, or while it is an orphan of its station's (re)connect or
        boot. See :func:`.dispatch.set_limit`."""
        return await dispatch.set_limit(self, cp_id, connector_id, current_a, validity_s=validity_s,
                                        retries=retries, backoff_s=backoff_s, verify=verify,
                                        transaction_id=transaction_id)

    async def set_limits(self, limits_a: dict[tuple[str, int], float], **kw) -> dict[tuple[str, int], DispatchRecord]:
        """:meth:`set_limit` for many (cp_id, connector) at once, concurrently."""
        keys = list(limits_a)
        recs = await asyncio.gather(*(self.set_limit(k[0], k[1], limits_a[k], **kw) for k in keys))
        return dict(zip(keys, recs))

    async def _one_profile(self, cp_id: str, connector_id: int, purpose: str, current_a: float,
                           validity_s: int | None, profile_id: int | None = None) -> DispatchRecord:
        attempts: list[tuple[str, str]] = []
        async with self.station_lock(cp_id):
            ok = await dispatch.send_profile(
                self, cp_id, connector_id, purpose, current_a, attempts=attempts, retries=self.retries,
                backoff_s=self.backoff_s, validity_s=validity_s or self.default_validity_s, profile_id=profile_id)
        return DispatchRecord(self.state.clock(), float(current_a), purpose if ok else None,
                              float(current_a) if ok else None, attempts)

    async def set_default_profile(self, cp_id: str, current_a: float, *, connector_id: int = 0,
                                  validity_s: int | None = None, profile_id: int | None = None) -> DispatchRecord:
        """Send a TxDefaultProfile of ``current_a`` [A] (connector 0: every connector); ``profile_id``
        defaults to ``100 + connector_id``."""
        return await self._one_profile(cp_id, connector_id, pr.TX_DEFAULT, current_a, validity_s, profile_id)

    async def set_station_max(self, cp_id: str, current_a: float, *, validity_s: int | None = None) -> DispatchRecord:
        """Send a ChargePointMaxProfile (1.6) / ChargingStationMaxProfile (2.0.1) of ``current_a`` [A]."""
        return await self._one_profile(cp_id, 0, pr.MAX_16, current_a, validity_s)

    async def get_composite_schedule(self, cp_id: str, connector_id: int, duration_s: int = 3600,
                                     unit: str | None = "A") -> dict:
        """The charger's GetCompositeSchedule: ``{"status", "start", "unit", "periods": [(start_s, limit)]}``.

        Limits are floats (1.6 answers Decimals). Raises if the charger is offline or errs.
        """
        conn = self._require(cp_id)
        return await conn.composite_schedule(connector_id, duration_s, unit)

    async def read_applied_limit(self, cp_id: str, connector_id: int, duration_s: int = 60):
        """Ask the station what limit it applies (GetCompositeSchedule) and record it in
        ``state.stations[cp_id].reported[connector_id]`` (snapshot column ``reported_limit_a``).

        Returns the :class:`~nowblock.ocpp.state.ReportedLimit` or None (offline, no answer, or
        the station refused GetCompositeSchedule before). See :func:`.dispatch.read_applied_limit`.
        """
        return await dispatch.read_applied_limit(self, cp_id, connector_id, duration_s)

    async def clear_profiles(self, cp_id: str, *, profile_id: int | None = None, connector_id: int | None = None,
                             purpose: str | None = None, stack_level: int | None = None) -> str:
        """ClearChargingProfile by id, or by the given criteria, or all; returns Accepted/Unknown."""
        conn = self._require(cp_id)
        crit = dict(profile_id=profile_id, connector_id=connector_id, purpose=purpose, stack_level=stack_level)
        answer = await conn.clear_profiles(**crit)
        if answer == "Accepted":
            self.state.on_profiles_cleared(cp_id, **crit)
        return answer

    async def send_raw_profile(self, cp_id: str, connector_id: int, profile: dict) -> str:
        """Send a profile payload as built by :func:`~nowblock.ocpp.profiles.build_profile`; record it if accepted."""
        conn = self._require(cp_id)
        answer = await conn.set_profile(connector_id, profile)
        if answer == "Accepted":
            self.state.on_profile_accepted(cp_id, connector_id, profile)
        return answer

    def _require(self, cp_id: str):
        conn = self.connection(cp_id)
        if conn is None:
            raise ConnectionError(f"{cp_id} is not connected")
        return conn
