"""The HTTP API inside ``nowblock serve``: uvicorn on the central system's own event loop.

:class:`BlockApi` owns the FastAPI app, the live stream, the metrics and a short-lived cache
of the block's state; :meth:`BlockApi.start` runs ``uvicorn.Server.serve()`` as a task on the
running loop (no thread, no second process: handlers read the live state directly, and the
OCPP side and the HTTP side share one loop, measured in docs/bench_api.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time as _time

import uvicorn
from pydantic_core import to_json

from nowblock.api.app import create_app
from nowblock.api.auth import TokenCheck
from nowblock.api.metrics import BlockMetrics
from nowblock.api.stream import StreamHub
from nowblock.control.status import BlockState, block_state, site_view

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: ``nowblock serve`` handles Ctrl-C itself."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class BlockApi:
    """The HTTP API of one controller.

    Parameters
    ----------
    controller : Controller
        The live loop (its central system's state, store and operator inputs).
    tokens : TokenCheck, optional
        Accepted write tokens and the read mode (default: no token, reads from localhost only,
        every write refused).
    state_ttl_s : float
        [s] How long a built state is reused (writes and steps renew it at once).
    meter_batch_s : float
        [s] Meter values are streamed in one message per this interval.
    keepalive_s : float
        [s] A comment line on an idle stream this often (proxies close silent connections).
    """

    def __init__(self, controller, *, tokens: TokenCheck | None = None, state_ttl_s: float = 1.0,
                 meter_batch_s: float = 0.25, keepalive_s: float = 15.0) -> None:
        self.controller = controller
        self.tokens = tokens or TokenCheck()
        self.state_ttl_s = float(state_ttl_s)
        self.keepalive_s = float(keepalive_s)
        self.site_info = site_view(controller.site)
        self.hub = StreamHub(controller, meter_batch_s=meter_batch_s)
        self.metrics = BlockMetrics(controller, self.state, self.hub)
        self.app = create_app(self)
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self._cache: dict[float, tuple[float, int, BlockState, bytes | None]] = {}
        self._version = 0
        controller.step_listeners.append(self._on_step)

    # ---- the state, built at most once per ttl ---------------------------------------------------
    def changed(self) -> None:
        """Forget the cached state (after a write or a step)."""
        self._version += 1

    def _on_step(self, res) -> None:
        self.changed()

    def state(self, plan_hours: float = 4.0) -> BlockState:
        """The block's :class:`~nowblock.control.status.BlockState` (cached for ``state_ttl_s``)."""
        return self._cached(plan_hours)[2]

    def state_json(self, plan_hours: float = 4.0) -> bytes:
        """:meth:`state` as JSON bytes (encoded once per cached state)."""
        key = float(plan_hours)
        t, v, st, body = self._cached(key)
        if body is None:
            body = to_json(st, inf_nan_mode="null")
            self._cache[key] = (t, v, st, body)
        return body

    def _cached(self, plan_hours: float):
        key = float(plan_hours)
        now = _time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] == self._version and now - hit[0] < self.state_ttl_s:
            return hit
        st = block_state(self.controller, plan_hours=plan_hours)
        entry = (now, self._version, st, None)
        if len(self._cache) > 8:
            self._cache.clear()
        self._cache[key] = entry
        return entry

    # ---- serving -------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> "BlockApi":
        """Serve on ``host:port`` (``port=0``: a free one, see :attr:`port`) as a task on this loop."""
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2, loop="none", http="h11", ws="none")
        self.server = _Server(config)
        # Bind here: a taken port is an OSError for the caller (uvicorn itself would exit the process).
        try:
            family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.create_server(addr[:2], family=family)
        except OSError as exc:
            raise OSError(f"the HTTP API cannot listen on {host}:{port}: {exc}") from exc
        self.hub.start()
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]), name="nowblock-api")
        while not self.server.started:
            if self._task.done():
                await self.hub.stop()
                sock.close()
                raise OSError(f"the HTTP API could not start on {host}:{port}")
            await asyncio.sleep(0.01)
        log.info("HTTP API on http://%s:%d (reads: %s, %d write token(s))", host, self.port, self.tokens.reads,
                 len(self.tokens.hashes))
        return self

    @property
    def port(self) -> int | None:
        """The port listened on (after :meth:`start`)."""
        if self.server is None or not self.server.servers:
            return None
        return self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving and end the streams."""
        await self.hub.stop()
        self.metrics.close()
        if self._on_step in self.controller.step_listeners:
            self.controller.step_listeners.remove(self._on_step)
        if self.server is not None:
            self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
