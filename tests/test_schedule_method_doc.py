"""Schedule.method's docstring lists every method the optimizer can return (outside test s37
F5: "lp+rounding+polish" and four other method names the code returns were not listed)."""

import ast
from pathlib import Path

import nowblock.milp.schedule as schedule_mod
from nowblock.milp.schedule import Schedule

MILP = Path(schedule_mod.__file__).parent


def _methods_in_code() -> set[str]:
    """String literals passed as a method: ``offer(plan, objective, "...")``, the first item of a
    ``candidates.append(("...", plan, objective))`` and ``method="..."`` keywords; a suffix added
    to another method (``best.method + "+polish"``) as the suffix."""
    found = set()
    for path in MILP.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if name == "offer" and len(node.args) >= 3:
                    arg = node.args[2]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.add(arg.value)
                    elif isinstance(arg, ast.BinOp) and isinstance(arg.right, ast.Constant):
                        found.add(arg.right.value)
                if name == "append" and node.args and isinstance(node.args[0], ast.Tuple):
                    first = node.args[0].elts[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        found.add(first.value)
                for kw in node.keywords:  # pandas' reindex(method="ffill") is no plan's method
                    if name not in ("reindex", "fillna") and kw.arg == "method" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        found.add(kw.value.value)
    return found


def test_every_method_the_code_returns_is_in_the_docstring():
    methods = _methods_in_code()
    assert {"lp+rounding", "milp", "greedy", "+polish"} <= methods  # the scan itself still finds them
    doc = " ".join(Schedule.__doc__.split())
    missing = sorted(m for m in methods if f'"{m}"' not in doc)
    assert not missing, f"Schedule.method's docstring does not list {missing}"
    assert '"lp+rounding+polish"' in doc


def test_the_greedy_entry_says_how_the_plan_is_made():
    # "greedy" was "the earliest-deadline plan" while solve.py's detail said "greedy least-laxity
    # plan": make_plan from nothing fills cars earliest deadline first, and under a cap (the
    # critical peak) places slot by slot least laxity first (rounding.py, plan_kernels.py)
    import inspect

    from nowblock.milp import rounding

    doc = " ".join(Schedule.__doc__.split())
    entry = doc[doc.index('``"greedy"``'):doc.index('``"none"``')]
    made = inspect.getsource(rounding.make_plan)
    assert "fill_least_laxity" in made and "isfinite(cap)" in made and "car_order" in made
    assert "least laxity" in entry and "critical peak" in entry and "earliest deadline" in entry
    assert "no power cap" in entry and "better by objective" in entry
