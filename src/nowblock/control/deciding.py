"""The policy call of a live step: a time limit, a fallback, and plans that arrive late.

A MILP step for thousands of cars can outlast what a live step may wait. :class:`TimedPolicy`
runs the policy in a worker thread (or its :class:`~nowblock.control.solver.SolverProcess`),
waits a bounded time, and lets the fallback heuristic answer when the policy fails or is slow.
A solve that finishes after its step gave up is not wasted: it wakes the loop, and the next step
applies its plan for that moment if it is younger than a period.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import pandas as pd

from nowblock.control.solver import SolverProcess
from nowblock.loop.calling import call_policy, check_answer
from nowblock.seam import BlockSnapshot, Decision, Policy, decide

log = logging.getLogger(__name__)


class TimedPolicy:
    """A policy with a time limit per step, a fallback, and late plans kept for the next step.

    Parameters
    ----------
    policy : Policy or SolverProcess
    fallback : Policy
        Answers when ``policy`` fails or is slower than the step may wait.
    solve_timeout_s : float
        [s] Never wait longer than this.
    new_car_timeout_s : float
        [s] The wait when a car has never been sent a limit (its first TxProfile is due).
    max_wait_s : float
        [s] The wait otherwise.
    period_s : float
        [s] A late plan older than this is not used.
    wake : callable
        Called when a late solve finishes, so the loop steps again soon.
    """

    def __init__(self, policy, fallback: Policy, *, solve_timeout_s: float, new_car_timeout_s: float,
                 max_wait_s: float, period_s: float, wake: Callable[[], None]) -> None:
        self.policy = policy
        self.fallback = fallback
        self.solve_timeout_s = float(solve_timeout_s)
        self.new_car_timeout_s = float(new_car_timeout_s)
        self.max_wait_s = float(max_wait_s)
        self.period_s = float(period_s)
        self._wake = wake
        self._solving: asyncio.Future | None = None
        self._solving_time: pd.Timestamp | None = None  # the snapshot time of the solve running or last run
        self._solving_used = True  # its answer was used (or is of no use)

    async def decide(self, snap: BlockSnapshot, *, new_cars: bool = False) -> tuple[Decision, str, str]:
        """The policy's decision, or the fallback's when the policy fails or is slow.

        Parameters
        ----------
        snap : BlockSnapshot
        new_cars : bool
            A car in ``snap`` has never been sent a limit: wait ``new_car_timeout_s`` at most.

        Returns
        -------
        decision : Decision
        name : str
            The policy that decided.
        status : str
            "ok", the reason the fallback answered, or "late plan of HH:MM:SS".
        """
        if len(snap.cars) == 0:
            return call_policy(self.policy, self.fallback, snap)
        late = self._late_plan(snap)
        if late is not None:
            return late
        status, decision = "ok", None
        wait = min(self.solve_timeout_s, self.new_car_timeout_s if new_cars else self.max_wait_s)
        if self._solving is not None and not self._solving.done():
            status = "previous solve still running"
        else:
            if isinstance(self.policy, SolverProcess):
                self._solving = asyncio.ensure_future(self.policy.decide(snap))
            else:
                self._solving = asyncio.ensure_future(asyncio.to_thread(decide, self.policy, snap))
            self._solving_time = snap.time
            self._solving_used = False
            try:
                decision = await asyncio.wait_for(asyncio.shield(self._solving), wait)
                self._solving_used = True
            except asyncio.TimeoutError:
                status = f"time-out after {wait:g} s"
                self._solving.add_done_callback(lambda f: self._wake())  # its plan is used next step
            except Exception as exc:  # noqa: BLE001 - the fallback answers
                self._solving_used = True
                status = f"failed: {exc!r}"
                log.exception("policy %s failed", self.policy.name)
        if decision is not None:
            try:
                check_answer(snap.cars.index, decision.current_a)
                return decision, self.policy.name, status
            except ValueError as exc:  # no setpoints for these cars: the fallback answers
                status = f"failed: {exc!r}"
                log.warning("policy %s: %s", self.policy.name, exc)
        log.info("policy %s: %s; %s answers this step", self.policy.name, status, self.fallback.name)
        return decide(self.fallback, snap), self.fallback.name, status

    def _late_plan(self, snap: BlockSnapshot) -> tuple[Decision, str, str] | None:
        """The plan of a solve that finished after its step gave up on it, for this snapshot."""
        fut = self._solving
        if fut is None or not fut.done() or self._solving_used:
            return None
        self._solving_used = True
        if fut.cancelled() or fut.exception() is not None:
            return None
        made = self._solving_time
        if (snap.time - made).total_seconds() > self.period_s:
            return None
        plan: Decision = fut.result()
        if isinstance(plan.plan_a, pd.DataFrame) and len(plan.plan_a):
            rows = plan.plan_a[plan.plan_a.index <= snap.time]
            now_a = (rows.iloc[-1] if len(rows) else plan.plan_a.iloc[0]).astype(float)
        else:
            now_a = pd.Series(plan.current_a, dtype=float)
        answer = now_a.reindex(snap.cars.index)
        if answer.isna().any():  # cars that arrived since: the fallback's answer for them
            answer = answer.fillna(decide(self.fallback, snap).current_a.reindex(snap.cars.index))
        return (Decision(answer.fillna(0.0).rename("current_a"), plan.plan_a, plan.status, plan.detail),
                self.policy.name, f"late plan of {made.strftime('%H:%M:%S')}")
