"""Quickstart: the README's API tour on two days of the default NOW-Block scenario.

Run ``python examples/quickstart.py [OUT_DIR]``; it compares the MILP with the baselines and
writes a scenario folder, a plan and a plot into OUT_DIR (default ``./quickstart-out``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nowblock as nb


def main(out_dir: str = "quickstart-out", days: int = 2) -> dict[str, dict]:
    """Simulate every policy on ``days`` days of the default scenario; returns metrics by policy."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scn = nb.Scenario.default(days=days)
    print(f"site {scn.site.name}: {len(scn.site.charge_points)} charging points, "
          f"grid connection {scn.site.limits_a[0].tolist()} A, {len(scn.sessions)} sessions")

    results = {}
    for policy in ("uncontrolled", "equal", "edf", "llf", "milp"):
        res = nb.simulate(scn, policy=policy)
        results[policy] = res.metrics
        m = res.metrics
        print(f"{policy:>12}: delivered {m['energy_delivered_kwh']:8.1f} kWh "
              f"({m['demand_met']:.2%}), peak {m['peak_kw']:6.1f} kW, "
              f"overload {m['max_overload_a']:5.1f} A, cost {m['cost_eur']:7.2f} EUR")
        if policy == "milp":
            res.plot(out / "milp-load.png")

    # One plan for the whole block from its first arrival, as a grid tool would ask for it.
    sched = nb.optimize(scn.site, scn.sessions, start=scn.start, horizon="24h", step="15min",
                        base_load=scn.base_load, prices=scn.prices)
    print(f"plan: status {sched.status}, objective {sched.objective:.2f}, "
          f"gap {sched.mip_gap:.4f}, solve {sched.solve_seconds:.3f} s")
    sched.current_a.to_csv(out / "plan_current_a.csv")
    scn.to_dir(out / "scenario")
    again = nb.Scenario.from_dir(out / "scenario")
    assert len(again.sessions) == len(scn.sessions)
    return results


if __name__ == "__main__":
    main(*sys.argv[1:2])
