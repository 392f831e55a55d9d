"""The policy in a process of its own, so a long solve never slows the event loop.

A MILP step for thousands of cars runs for seconds, much of it in Python and numba code that
holds the interpreter lock; in a thread of the ``serve`` process it halves the speed of every
OCPP handler and of the dispatch while it runs (measured with 2,000 stations). A
:class:`SolverProcess` keeps one worker process (started with ``spawn``: the server has
threads and sockets that must not be forked) holding the policy object, so the policy's own
state (the previous plan it warm-starts from) persists between steps; the controller hands it
snapshots and gets decisions back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import threading

from nowblock.seam import BlockSnapshot, Decision, decide

log = logging.getLogger(__name__)

_POLICY = None  # the worker's policy object


def _init(name: str, options: dict) -> None:
    from nowblock.policies import get_policy

    global _POLICY
    _end_with_parent()
    _POLICY = get_policy(name, **options)


def _end_with_parent() -> None:
    """End this worker when the process that started it ends, however it ends.

    A pool's worker waits for work on a queue that a parent killed with SIGKILL never closes:
    every ``kill -9`` of a ``nowblock serve`` left its worker (and its resource tracker) running
    for good, 280 MB each (the crash tests, sessions 38 and 39). The parent's sentinel (the pipe
    a ``spawn`` child is started with) becomes readable when the parent is gone.
    """
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mp.connection.wait([parent.sentinel])
        os._exit(0)  # no clean-up: a solve may be running, and its result has nobody to go to

    threading.Thread(target=watch, name="nowblock-end-with-parent", daemon=True).start()


def _warm_up() -> float:
    warm = getattr(_POLICY, "warm_up", None)
    return float(warm()) if callable(warm) else 0.0


def _decide(snapshot: BlockSnapshot) -> Decision:
    return decide(_POLICY, snapshot)


class SolverProcess:
    """A policy by name in one worker process (see the module docstring).

    Parameters
    ----------
    name : str
        The policy's name (:func:`nowblock.policies.get_policy`).
    options : dict
        Its options.

    Notes
    -----
    Behaves like a policy for the controller: ``name``, ``warm_up()`` and an awaitable
    :meth:`decide`. A worker that dies is replaced at the next call (the step that saw it die
    falls back to the heuristic).
    """

    def __init__(self, name: str, options: dict | None = None) -> None:
        self.name = name
        self.options = dict(options or {})
        self._pool: cf.ProcessPoolExecutor | None = None

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                                initializer=_init, initargs=(self.name, self.options))
        return self._pool

    def warm_up(self) -> float:
        """Start the worker and compile what its policy compiles (blocking); returns seconds."""
        return float(self._executor().submit(_warm_up).result())

    async def decide(self, snapshot: BlockSnapshot) -> Decision:
        """The policy's decision for ``snapshot``, computed in the worker."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), _decide, snapshot)
        except cf.process.BrokenProcessPool:
            log.error("the %s solver process died; starting a new one", self.name)
            self.close()
            raise

    def close(self) -> None:
        """Stop the worker (a solve still running is abandoned)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # A worker mid-solve would run on after shutdown(wait=False): the interpreter's exit hook
        # then joins it, and it keeps the server's stdout/stderr open, so whoever waits for
        # ``serve`` to end waits for that solve. The solve is abandoned anyway: end the worker.
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            if proc.is_alive():
                proc.terminate()
        for proc in workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
