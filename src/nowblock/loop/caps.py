"""Caps on the block: a lowered fuse rating for a while, and a cap on the charging power.

Two kinds of signal lower what the block may draw (the grid operator's, or the operator's own):

* a **current cap** on a fuse [A per phase] (the grid connection included): the fuse is
  treated as rated ``min(rating, cap)`` while the cap is in force;
* a **charging-power cap** [kW] on all charging points together (section 14a EnWG dimming,
  :mod:`nowblock.block.para14a`): power, not current. It becomes a virtual fuse above every
  charging point (below the grid connection, so the block's other load does not count
  against it) whose per-phase ratings add up to the power: :func:`power_cap_phase_currents_a`
  shares the power out over the phases the cars actually load, so a single-phase car may
  take as many amperes on its one phase as the power allows, not a third of them.

:func:`capped_site` applies both to a :class:`~nowblock.block.site.Site`; every policy and
the safety net then respect them without knowing they exist. Pure functions, shared by the
live loop and the simulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from nowblock.block.site import Fuse, Site

#: Id of the virtual fuse that carries a charging-power cap.
POWER_CAP_FUSE_ID = "charging-power-cap"

#: Id prefix of the virtual fuse that carries a charging point's rating over its EVSEs
#: (:func:`shared_points_site`).
POINT_FUSE_PREFIX = "point:"

#: [A] A fuse capped to nothing keeps this tiny rating (a site needs positive ratings): no
#: car fits under it, so every setpoint there is 0.
_ZERO_A = 1e-3


def power_cap_phase_currents_a(power_kw: float, voltage_v: float, demand_a) -> np.ndarray:
    """Per-phase current limits [A] (3,) whose total power is ``power_kw`` [kW].

    The power is shared by water-filling against ``demand_a`` [A per grid phase], the most
    the cars could draw on each phase: every phase gets its demand up to a common level
    ``lambda`` with ``sum(min(demand, lambda)) * voltage = power``; power left when every
    demand is met is spread evenly (for a car that plugs in before the next step). The
    limits always add up to ``power_kw * 1000 / voltage_v``, so the cars can never draw more
    power than the cap, whatever their phases.

    Parameters
    ----------
    power_kw : float
        [kW] Charging power allowed (>= 0).
    voltage_v : float
        [V] Phase-to-neutral voltage.
    demand_a : array-like, shape (3,)
        [A] The most the cars could draw on each grid phase (>= 0).

    Examples
    --------
    >>> power_cap_phase_currents_a(4.2, 230.0, [32.0, 0.0, 0.0]).round(2).tolist()
    [18.26, 0.0, 0.0]
    """
    budget = max(float(power_kw), 0.0) * 1000.0 / float(voltage_v)
    d = np.maximum(np.nan_to_num(np.asarray(demand_a, dtype=float).reshape(3), nan=0.0), 0.0)
    total = float(d.sum())
    if total <= budget:
        return d + (budget - total) / 3.0
    # The level lambda: phases with demand below it keep their demand, the others get lambda.
    order = np.sort(d)
    level = 0.0
    used = 0.0
    for k, dk in enumerate(order):
        rest = 3 - k  # phases with demand >= dk
        if used + rest * dk >= budget:
            level = (budget - used) / rest
            break
        used += dk
    return np.minimum(d, level)


def capped_site(site: Site, *, fuse_caps_a: Mapping[str, object] | None = None,
                charging_cap_a=None) -> Site:
    """``site`` with current caps on fuses and, optionally, a cap on all charging current.

    Parameters
    ----------
    site : Site
    fuse_caps_a : mapping, optional
        Fuse id -> cap [A per phase] (a number or three per-phase values); a fuse is rated
        ``min(rating, cap)``. Unknown fuse ids raise KeyError.
    charging_cap_a : array-like, shape (3,), optional
        [A per grid phase] Limits on the charging current of all charging points together
        (see :func:`power_cap_phase_currents_a`): a virtual fuse :data:`POWER_CAP_FUSE_ID`
        under the grid connection, above everything else.

    Returns
    -------
    Site
        ``site`` itself when there is nothing to cap; the charging points keep their order
        (so ``cp_index`` stays valid).
    """
    if not fuse_caps_a and charging_cap_a is None:
        return site
    fuses = list(site.fuses)
    for fid, cap in (fuse_caps_a or {}).items():
        i = site.fuse_ids.index(fid) if fid in site.fuse_ids else None
        if i is None:
            raise KeyError(f"unknown fuse {fid!r}")
        c = np.broadcast_to(np.asarray(cap, dtype=float), (3,))
        rated = np.minimum(np.asarray(fuses[i].max_current_a, dtype=float), c)
        fuses[i] = replace(fuses[i], max_current_a=tuple(float(max(v, _ZERO_A)) for v in rated))
    cps = site.charge_points
    if charging_cap_a is not None:
        root = site.root.id
        c = np.broadcast_to(np.asarray(charging_cap_a, dtype=float), (3,))
        virtual = Fuse(POWER_CAP_FUSE_ID, tuple(float(max(v, _ZERO_A)) for v in c), parent=root)
        fuses = [replace(f, parent=POWER_CAP_FUSE_ID) if f.parent == root else f for f in fuses]
        fuses.insert(1, virtual)
        cps = tuple(replace(cp, fuse=POWER_CAP_FUSE_ID) if cp.fuse == root else cp for cp in cps)
    return replace(site, fuses=tuple(fuses), charge_points=tuple(cps))


def shared_points_site(site: Site, ratings_a: Mapping[str, float]) -> Site:
    """``site`` with a virtual fuse above each charging point named in ``ratings_a``: the point's
    rating [A per phase] over all its connectors (1.6) or EVSEs (2.0.1) together.

    A charging point (one OCPP identity) with two EVSEs gives at most its ``max_current_a`` per
    phase in all, as its fail-safe share is divided over its EVSEs
    (:func:`nowblock.control.failsafe.failsafe_per_evse_a`); planned as one car each, its two cars
    got 32 + 31 A at a 32 A point (an outside test of a twin wallbox). The virtual fuse
    ``point:<id>`` sits between the point and its fuse, so every policy, the reservations and the
    safety net share the point's rating among its cars without knowing it is there.

    Parameters
    ----------
    site : Site
    ratings_a : mapping
        Charging point id -> [A per phase] the most the point gives on each of its phases in all
        (its ``max_current_a``, or a cap window's lower value in force). Unknown ids raise KeyError.

    Returns
    -------
    Site
        ``site`` itself when ``ratings_a`` is empty; the charging points keep their order (so
        ``cp_index`` stays valid).
    """
    if not ratings_a:
        return site
    ids = set(site.fuse_ids)
    fuses = list(site.fuses)
    cps = list(site.charge_points)
    for cp_id, rating in ratings_a.items():
        j = int(site.cp_index([cp_id])[0])
        fid = f"{POINT_FUSE_PREFIX}{cp_id}"
        while fid in ids:  # a real fuse of that name: the virtual one gives way
            fid += "'"
        ids.add(fid)
        fuses.append(Fuse(fid, (float(max(rating, _ZERO_A)),) * 3, parent=cps[j].fuse))
        cps[j] = replace(cps[j], fuse=fid)
    return replace(site, fuses=tuple(fuses), charge_points=tuple(cps))


def phase_demand_a(site: Site, cp_index, phases, max_current_a) -> np.ndarray:
    """[A] (3,) The most a set of cars could draw on each grid phase (each at its maximum)."""
    cp_index = np.asarray(cp_index, dtype=np.int64)
    if len(cp_index) == 0:
        return np.zeros(3)
    used = site.phase_usage(cp_index, np.asarray(phases, dtype=np.int64))
    return used.T.astype(float) @ np.maximum(np.nan_to_num(np.asarray(max_current_a, dtype=float)), 0.0)


__all__ = ["POINT_FUSE_PREFIX", "POWER_CAP_FUSE_ID", "capped_site", "phase_demand_a", "power_cap_phase_currents_a",
           "shared_points_site"]
