"""Operator choices and solver settings of one planning step (:class:`OptimizeOptions`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from nowblock.baselines import STRATEGIES

Sharing = Literal["weighted", "fair"]


@dataclass(frozen=True)
class OptimizeOptions:
    """Operator choices and solver settings for one planning step.

    Objective [EUR], minimised over the returned plan:

    - ``sharing``: how shortfall is shared when not every car can be served: ``"weighted"``
      (minimise the priority-weighted total shortfall [kWh]) or ``"fair"`` (first maximise the
      smallest fraction of its need any car gets, then the weighted total).
    - ``shortfall_eur_per_kwh`` [EUR/kWh]: penalty on energy not delivered by departure.
    - ``peak_eur_per_kw`` [EUR/kW]: cost on the highest block import over the horizon.
    - ``change_eur_per_a`` [EUR/A]: penalty on every ampere a setpoint moves between slots.
    - ``change_slots``: number of leading slots whose setpoint changes are penalised (None: all);
      the first compares with the setpoint applied now.
    - ``early_eur_per_kwh`` [EUR/kWh]: a tiny cost on every kWh delivered (energy beyond the need
      is never free); when > 0 the returned plan is also *front-loaded*: each car's energy moves
      to its earliest slots that cost no more, under the plan's own peak (energy now is worth
      more than energy promised later when arrivals are unknown). 0 switches both off. Until
      0.2 this was a cost rising from 1x to 2x over the horizon inside the model: every slot
      priced differently made HiGHS's LP five to thirty times slower (docs/bench_optimize.md).

    - ``after_horizon_weight``: the shortfall price of energy a car leaving after the horizon's
      end could still get after it, as a share of ``shortfall_eur_per_kwh``
      (:func:`nowblock.optimize` only, see ``Formulation.due_kwh``). Such a car needs by the
      horizon's end only what it could not get later (its need less what its maximum current
      delivers from the horizon's end to its departure, at least 0); the rest of its need,
      taken inside the horizon, is worth this share of its shortfall price, so cars due inside
      the horizon are served first and the room left goes to the later ones. 0.1 by default
      (a tenth of 20 EUR/kWh, far above any energy price; a later car's energy comes before a
      due one's only at ten times its priority). Until session 36 a 4 h plan treated the whole
      need of every car as due at the horizon's end: a car leaving at its end was left
      9.5 kWh short while a car leaving the next morning got 28.6 of its 30 kWh.

    Method (docs/optimizer.md, "Solving"):

    - ``time_limit_s`` [s]: bounds the whole call: building, the LP, the MILP stage, rounding.
    - ``mip_rel_gap``: a plan within this relative distance of the proven bound is ``"optimal"``
      (1 % by default); a plan further away makes the MILP stage run, if its budget allows.
    - ``mip_abs_gap`` [EUR]: a plan within this absolute distance of the bound is ``"optimal"``
      too (a cent by default: on a block whose whole objective is a few cents of tie-breaks, one
      pilot step of peak is already a percent). As HiGHS's ``mip_abs_gap``.
    - ``milp_effort``: the MILP stage may take this many times what the call spent before it
      (building and the LP), never past the time limit; 0: never run it. It runs only when the
      rounded LP plan is not within ``mip_rel_gap`` of the LP bound.
    - ``milp_min_s`` [s]: the MILP stage may take at least this long (HiGHS's MILP alone takes
      tens of milliseconds on the smallest blocks, more than their LP), never past the time limit.
      0.1 s by default (0.25 s before session 25): on the 72 instance-matrix cells with 50 cars,
      or 200 cars at 15 min, the gap of every plan moved by at most 0.0036 (one better, two
      worse) while the cells that run the stage took 40-50 % less; a congested workplace week
      met the same demand (0.9484 against 0.9480, within its run-to-run spread) in 18.4 s
      instead of 28.1 s, one run each (docs/bench_quality.md, "Session 25").
    - ``milp_prove``: the MILP stage first searches the neighbourhood of the best plan (HiGHS on
      the MILP with every integer fixed where the stage's LP relaxation agrees with the plan,
      RINS); then HiGHS on the whole MILP from the best plan for the rest of its budget: with
      ``milp_prove`` (the default) always, for a proven bound, else only when the neighbourhood
      held no better plan. :class:`~nowblock.milp.MilpPolicy` turns it off by default: a
      receding horizon needs the plan, not the proof (docs/bench_quality.md, "Session 31").
    - ``binary_slots``: in the MILP stage, the number of leading slots whose cells get an
      on/off binary (None: all slots), and only cells whose fuse rows can bind. The returned
      plan keeps "0 or >= min" in every slot whatever this is (the rounding sees to that).
    - ``threads`` (None: HiGHS default); ``solver_options``: extra HiGHS options, each checked.
    - ``current_step_a`` [A]: pilot-signal step of the plan (0.1 for OCPP 1.6).
    - ``backend``: ``"highs"`` (direct, default) or ``"pyomo"`` (the same model through Pyomo,
      MILP only, no LP stage).
    - ``fallback``: the baseline policy played forward when the solver raises or fails.

    Receding-horizon policy only (:class:`nowblock.milp.MilpPolicy`):

    - ``departure_margin_h`` [h]: plan to finish this much before the (known or estimated)
      departure, at most a quarter of the time left, so a car that draws less than offered near
      full (battery taper) can still catch up. 1.5 h since session 26 (was 1 h); measured at a
      tenth of the rating, one week each, 1.5 h / 1 h (docs/bench_quality.md, "Session 26"):
      workplace with known needs 0.9487-0.9497 in five runs / 0.9470-0.9477 in three (seeds 2
      and 7: 0.9406 / 0.9396, 0.8880 / 0.8880); public with needs fitted on four weeks
      0.9677-0.9678 in three runs / 0.9602-0.9620 in three (seed 7: 0.9280 / 0.9279);
      residential, NOW-Block and every other needs setting within 0.002 either way.
    - ``taper_kwh`` [kWh], ``taper_share``: plan the last ``taper_kwh`` of a car's known remaining
      energy at ``taper_share`` of its maximum draw, in the slots of its last hours before its
      (margin) departure that this energy takes at that draw; never the first slot (offered
      now), never below the car's minimum, and a car already drawing less than offered is planned
      at its draw (:func:`nowblock.milp.kernels.snapshot_plan_arrays`). OCPP 1.6 gives no state
      of charge: a battery's taper near full is seen only once it starts, and the margin (a
      quarter of the time left near the end) does not cover a car whose whole charge the plan
      left to its last hours. 0 (default) switches it off. Used by the receding-horizon policy
      (``MilpPolicy``: live control and ``simulate``), which plans from a snapshot;
      :func:`nowblock.optimize` plans the sessions as given and does not apply it. On an outside tester's 100 A block
      (one phase full all night) 6 kWh at 0.75 filled a 22.09 kWh car the default MILP left
      1.09 kWh short (demand met 0.976937, EDF's, against 0.976683); not the default because the
      workplace week at a tenth could not be shown equal: single runs 0.9420-0.9444 against the
      default's 0.9429-0.9489 in three runs (the plan is not repeatable on a loaded machine).
    - ``urgency_h`` [h]: a car's shortfall weighs ``1 + urgency_h / hours_left`` times more
      (``hours_left`` to its real departure, at least one control step): a plan's shortfall on a
      car leaving soon is final, on a car staying for hours the next plans can still make it
      good. 0 switches it off.
    - ``top_up_h`` [h]: give the first slot's spare room (after the plan) to cars that still need
      energy and leave within this many hours, earliest departure first, up to their maximum and
      never above the plan's own peak power (0: off). The plan's later slots are promises that
      arriving cars break; the window trades demand met against the plan's price shifting.
      Measured on the congested residential week (1/10 of the rating, known needs;
      docs/bench_quality.md) and on the default week, demand met / cost: 3 h 0.9877 / 527 EUR and
      365 EUR; 6 h 0.9903 / 532 and 366; **12 h 0.9942 / 555 and 402** (the default: the smallest
      window that reaches the simulator's ceiling there, LLF's 0.9942 at 567 EUR; EDF on the
      default week costs 437 EUR); 24 h 0.9942 / 562 and 417. Tuned on two weeks: other blocks
      may want another value. Before the optimizer's new method (issue 15) it served only the
      cars the plan left short; that plan leaves almost none short on paper.
    - ``top_up_guessed``: also give the first slot's spare room to every car whose needs were
      estimated (``needs_known`` False) and that still wants energy, after the cars the plan
      leaves short and leaving soon, shared equally (:func:`nowblock.milp.policy.share_spare_a`;
      in equal share's admission order where not every one gets its minimum). A guessed
      departure or energy may order cars, never leave room unused while a car that still draws
      could take it: without this the plan spread a guessed 15 kWh over a guessed 10 h at the
      cheapest hours while real cars left (demand met 0.891 against equal sharing's 0.967 on a
      congested residential week, docs/bench_quality.md).
    - ``top_up_in_plan``: the plan itself serves first what the top-up would: for cars with
      known needs leaving within ``top_up_h``, energy in the first slot costs less than in any
      later one (by the horizon's price spread plus 0.05 EUR/kWh). The top-up after the plan only
      fills spare room; this lets the plan pause a car with time to spare on a full phase so that a
      waiting car can use the idle phases (a congested workplace week lost 195 kWh of room on
      idle phases while cars that ended short waited, docs/bench_quality.md). The preference is
      worth about 0.0125 EUR a kW over a 15-minute slot, so it beats the default peak price
      (0.01 EUR/kW, a tie-break) but not one an operator who pays for peak sets: on the
      embedded default week the MILP's peak rose from 80 to 109 kW (the connection allows it)
      and its cost from 402 to 421 EUR (EDF: 437 EUR, the same demand met).
    - ``trust_estimates``: cars whose needs were estimated are topped up (and preferred now by
      ``top_up_in_plan``) by their estimated departure like cars with known needs, before the
      spare room is shared.
    - ``plan_estimates``: which cars with estimated needs the plan's first slot serves before
      the spare room is shared equally among all of them: ``"fitted"`` (default) those whose
      estimate came from a fitted estimator (the loop's ``needs_estimate`` column, see
      :class:`nowblock.loop.needs.NeedsEstimation`; not the ``"provisional"`` estimates of a
      forecaster that has seen few sessions), ``"all"``, or ``"none"``. The fallback
      rule's guesses (10 h, 15 kWh) carry no information about the car; planning by them is
      first-come-first-served on a guessed dwell. Measured at a tenth of the rating, one week
      each (docs/bench_quality.md), demand met with the plan / without it: no history,
      residential 0.9682 / 0.9666, workplace 0.8409 / 0.8658, public 0.9631 / 0.9628, NOW-Block
      0.9989 / 0.9996; fitted on four weeks, residential 0.9769 / 0.9667, workplace 0.8564 /
      0.8621, public 0.9600 / 0.9634, NOW-Block 0.9996 / 0.9996.
    - ``guessed_share``: how the spare room now is shared among the cars with estimated needs:
      ``"round_robin"`` (default, ACN-Sim's 1 A turns) or ``"equal"`` (max-min fair
      water-filling floored to pilot steps). Measured at a tenth of the rating, one week each,
      one run (docs/bench_quality.md, "Session 24"), demand met round robin / equal: no history,
      workplace 0.8672 / 0.8658, residential 0.9668 / 0.9666, public 0.9631 / 0.9628 (the
      round-robin baseline: 0.8680, 0.9668, 0.9631); fitted on four weeks, workplace 0.8628 /
      0.8557, residential 0.9759 / 0.9767, public 0.9572 / 0.9613.
    """

    sharing: Sharing = "weighted"
    shortfall_eur_per_kwh: float = 20.0
    peak_eur_per_kw: float = 0.01
    change_eur_per_a: float = 1e-4
    early_eur_per_kwh: float = 1e-3
    after_horizon_weight: float = 0.1
    binary_slots: int | None = 8
    change_slots: int | None = 4
    departure_margin_h: float = 1.5
    taper_kwh: float = 0.0
    taper_share: float = 1.0
    urgency_h: float = 1.0
    top_up_h: float = 12.0
    top_up_guessed: bool = True
    plan_estimates: Literal["fitted", "all", "none"] = "fitted"
    guessed_share: Literal["round_robin", "equal"] = "round_robin"
    top_up_in_plan: bool = True
    trust_estimates: bool = False
    time_limit_s: float = 30.0
    mip_rel_gap: float = 0.01
    mip_abs_gap: float = 0.01
    milp_effort: float = 1.0
    milp_min_s: float = 0.1
    milp_prove: bool = True
    threads: int | None = None
    current_step_a: float = 1.0
    backend: Literal["highs", "pyomo"] = "highs"
    fallback: str = "llf"
    solver_options: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.sharing not in ("weighted", "fair"):
            raise ValueError(f"sharing: expected 'weighted' or 'fair', got {self.sharing!r}")
        if self.fallback not in STRATEGIES or self.fallback == "uncontrolled":
            raise ValueError(f"fallback: expected one of equal, edf, llf, got {self.fallback!r}")
        if self.plan_estimates not in ("fitted", "all", "none"):
            raise ValueError(f"plan_estimates: expected 'fitted', 'all' or 'none', got {self.plan_estimates!r}")
        if self.guessed_share not in ("round_robin", "equal"):
            raise ValueError(f"guessed_share: expected 'round_robin' or 'equal', got {self.guessed_share!r}")
        if self.backend not in ("highs", "pyomo"):
            raise ValueError(f"backend: expected 'highs' or 'pyomo', got {self.backend!r}")
        for name in ("shortfall_eur_per_kwh", "peak_eur_per_kw", "change_eur_per_a", "early_eur_per_kwh",
                     "urgency_h", "top_up_h", "milp_effort", "mip_abs_gap", "milp_min_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.taper_kwh >= 0 or not 0 < self.taper_share <= 1:
            raise ValueError(f"taper_kwh: must be >= 0, taper_share in (0, 1]; got {self.taper_kwh}, {self.taper_share}")
        if not 0 <= self.after_horizon_weight <= 1:
            raise ValueError(f"after_horizon_weight: must be in [0, 1], got {self.after_horizon_weight}")
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s: must be > 0, got {self.time_limit_s}")
        if not 0 <= self.mip_rel_gap < 1:
            raise ValueError(f"mip_rel_gap: must be in [0, 1), got {self.mip_rel_gap}")
        if not self.current_step_a > 0:
            raise ValueError(f"current_step_a: must be > 0, got {self.current_step_a}")
        for name in ("binary_slots", "change_slots"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name}: must be >= 0 or None, got {v}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "OptimizeOptions":
        """Build options from keyword arguments; an unknown key raises a TypeError naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(kwargs) - known)
        if bad:
            raise TypeError(f"unknown optimizer option(s) {bad}; known: {sorted(known)}")
        return cls(**kwargs)
