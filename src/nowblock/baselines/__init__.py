"""Baseline charging policies (uncontrolled, equal share, EDF, LLF): strategies as plain functions.

They sit below the optimizer, which plays one forward when its solver finds nothing; the
registry of every policy by name is :func:`nowblock.policies.get_policy`.
"""

from nowblock.baselines.heuristics import STRATEGIES, HeuristicPolicy, baseline_policy

__all__ = ["STRATEGIES", "HeuristicPolicy", "baseline_policy"]
