"""Needs learnt online: the block's own sessions, as they end, become the needs forecaster's history.

A block that starts without history (a new installation, OCPP 1.6 chargers that never report a
departure or an energy) still learns its cars. :class:`OnlineNeedsForecaster` watches the cars it
is asked about (the simulator and the live loop show it every plugged-in car with unknown needs at
every control step), records a session when it disappears, and refits a
:class:`~nowblock.forecast.needs.SessionNeedsForecaster` on the sessions seen so far once a day.
Until enough sessions ended it answers nothing, and :class:`nowblock.loop.needs.NeedsEstimation`
uses its fallback rule.

What a finished session teaches: its charging point, arrival and id tag are observed; its
departure is half a control step after the last time it was seen plugged in; its energy is what
it took up to that step (the last step's energy is not observed). A car that left full wanted exactly that; a car that left still drawing wanted
more, so on a congested block the learnt energies lean low. The estimation copes: a car that
still draws is always planned to want at least ``top_up_kwh`` more than it got.

Until the model was fitted on ``provisional_below`` sessions its estimates are marked
``provisional``: :class:`nowblock.loop.needs.NeedsEstimation` labels them so, and the MILP
policy orders cars by them but shares the room among them in turns instead of planning by them
(a week of a block's own sessions did not carry the skill four weeks of history do: planning by
a week's estimates cost 0.9 and 2.5 points of demand met on the congested public and workplace
weeks, docs/bench_quality.md, "Session 26").
"""

from __future__ import annotations

import pandas as pd

from nowblock.forecast.calendar import Calendar, ForecastError
from nowblock.forecast.needs import SessionNeedsForecaster, _ns, _time, check_arrived

__all__ = ["OnlineNeedsForecaster"]


class OnlineNeedsForecaster:
    """A :class:`SessionNeedsForecaster` refitted online on the sessions the block has seen end.

    Parameters
    ----------
    history : pandas.DataFrame, optional
        Sessions known before the start (the contract's sessions frame: charge_point_id,
        arrival, departure, energy_kwh, optional id_tag); they stay in every fit.
    min_sessions : int
        Sessions needed (history and learnt together) before the first fit; until then
        :meth:`predict_needs` returns no estimate (NaN).
    refit_every : str or pandas.Timedelta
        Time between fits (block time, not wall time) [default one day].
    make_forecaster : callable, optional
        Returns a fresh unfitted forecaster (default: ``SessionNeedsForecaster(calendar=calendar)``).
    calendar : Calendar, optional
        The clock and holidays the default forecaster learns in (default ``Calendar()``,
        Europe/Berlin); pass ``Calendar.for_site(site)`` for a block in another zone. With
        ``make_forecaster`` it only names the factory's clock (None: not known), which
        :func:`nowblock.simulate` compares with the site's.
    provisional_below : int
        Sessions (history and learnt together) the model must be fitted on before its estimates
        stop being marked ``provisional`` [default 300; in the closed-loop benchmarks, 24
        charging points saw 85-176 sessions a week, and the four weeks of history their fitted
        forecaster learns from hold 340-700].

    Attributes
    ----------
    learnt : pandas.DataFrame
        The sessions learnt so far (session_id, charge_point_id, arrival, departure, energy_kwh).
    fits : int
        Number of fits made.
    fitted_on : int
        Sessions the current model was fitted on (0 before the first fit).
    calendar : Calendar or None
        The clock the model learns in.
    """

    def __init__(self, history: pd.DataFrame | None = None, *, min_sessions: int = 20, refit_every="1D",
                 make_forecaster=None, provisional_below: int = 300, calendar: Calendar | None = None) -> None:
        if min_sessions < 1:
            raise ValueError(f"min_sessions: must be >= 1, got {min_sessions}")
        if provisional_below < 0:
            raise ValueError(f"provisional_below: must be >= 0, got {provisional_below}")
        self.provisional_below = int(provisional_below)
        self.fitted_on = 0
        self.history = history
        self.min_sessions = int(min_sessions)
        self.refit_every = pd.Timedelta(refit_every)
        if not self.refit_every > pd.Timedelta(0):
            raise ValueError(f"refit_every: must be positive, got {refit_every}")
        if make_forecaster is None:
            self.calendar = calendar or Calendar()
            make_forecaster = self._default_forecaster
        else:
            self.calendar = calendar
        self.make_forecaster = make_forecaster
        self._open: dict[str, dict] = {}
        self._done: list[dict] = []
        self._model: SessionNeedsForecaster | None = None
        self._last_fit: pd.Timestamp | None = None
        self._prev_call: pd.Timestamp | None = None
        self._step: pd.Timedelta | None = None
        self.fits = 0

    def _default_forecaster(self) -> SessionNeedsForecaster:
        """An unfitted :class:`SessionNeedsForecaster` on this forecaster's calendar."""
        return SessionNeedsForecaster(calendar=self.calendar)

    @property
    def learnt(self) -> pd.DataFrame:
        """The sessions seen to end so far."""
        return pd.DataFrame(self._done, columns=["session_id", "charge_point_id", "arrival", "departure",
                                                 "energy_kwh"])

    def _watch(self, frame: pd.DataFrame, now: pd.Timestamp) -> None:
        # Every call shows every plugged-in car with unknown needs, so one shown before and gone
        # now has left, after it was last seen and by now.
        # A car gone since the last call left within one control step of it: a longer pause
        # between calls means nobody was plugged in (the loop asks only about plugged-in cars).
        if self._prev_call is not None and now > self._prev_call:
            gap = now - self._prev_call
            self._step = gap if self._step is None else min(self._step, gap)
        self._prev_call = now
        current = set(map(str, frame.index))
        for sid in [s for s in self._open if s not in current]:
            seen = self._open.pop(sid)
            within = min(now - seen["last"], self._step if self._step is not None else now - seen["last"])
            self._done.append({"session_id": sid, "charge_point_id": seen["cp"], "arrival": seen["arrival"],
                               "departure": seen["last"] + within / 2, "energy_kwh": seen["kwh"]})
        got = (pd.to_numeric(frame["energy_delivered_kwh"], errors="coerce").fillna(0.0)
               if "energy_delivered_kwh" in frame.columns else pd.Series(0.0, index=frame.index))
        for sid, cp, arr, kwh in zip(map(str, frame.index), frame["charge_point_id"].astype(str),
                                     pd.DatetimeIndex(frame["arrival"]), got.to_numpy(float)):
            seen = self._open.setdefault(sid, {"cp": cp, "arrival": arr, "kwh": 0.0, "last": now})
            seen["last"], seen["kwh"] = now, max(seen["kwh"], float(kwh))

    def _maybe_fit(self, now: pd.Timestamp) -> None:
        if self._last_fit is not None and now - self._last_fit < self.refit_every:
            return
        frames = [f for f in (self.history, self.learnt) if f is not None and len(f)]
        if not frames or sum(len(f) for f in frames) < self.min_sessions:
            return
        sessions = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        try:
            model = self.make_forecaster().fit(sessions)
        except ForecastError:
            return  # nothing usable yet (every learnt session broken): keep the fallback
        if self._model is not None:
            for cp, dep in self._model._last_dep_ns.items():  # departures the old model saw since
                model._last_dep_ns[cp] = max(model._last_dep_ns.get(cp, dep), dep)
        self._model, self._last_fit = model, now
        self.fitted_on = len(sessions)
        self.fits += 1

    def predict_needs(self, cars: pd.DataFrame, time) -> pd.DataFrame:
        """Estimated ``departure`` (UTC) and ``energy_kwh`` [kWh] per session_id (and the quantile
        columns of :class:`SessionNeedsForecaster`), all NaN before the first fit, and
        ``provisional`` (bool): True while the model was fitted on fewer than
        ``provisional_below`` sessions.

        ``cars``: every plugged-in car with unknown needs now, indexed by session_id (or with a
        session_id column), with charge_point_id, arrival and energy_delivered_kwh [kWh]. A car
        arriving after ``time`` is refused (:class:`ForecastError`) before anything is learnt.
        """
        now = _time(time)
        frame = cars.set_index("session_id") if "session_id" in cars.columns else cars
        if len(frame):
            check_arrived(frame.index, _ns(frame["arrival"], "cars.arrival"), now)  # tz-aware arrivals by now, or a clear error
        self._watch(frame, now)
        self._maybe_fit(now)
        if self._model is None:
            return pd.DataFrame({"departure": pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]"),
                                 "energy_kwh": float("nan")}, index=frame.index)
        out = self._model.predict_needs(frame, now)
        out["provisional"] = self.fitted_on < self.provisional_below
        return out
