"""The quickstart example (the README's API tour) runs and keeps its promises."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.mark.slow
def test_quickstart_runs_and_controlled_policies_never_overload(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.main(str(tmp_path), days=1)
    assert set(results) == {"uncontrolled", "equal", "edf", "llf", "milp"}
    for policy in ("equal", "edf", "llf", "milp"):
        assert results[policy]["max_overload_a"] == 0.0, policy
    assert results["milp"]["energy_delivered_kwh"] <= results["milp"]["energy_requested_kwh"] + 1e-6
    assert (tmp_path / "milp-load.png").stat().st_size > 10_000
    assert (tmp_path / "plan_current_a.csv").is_file()
    assert (tmp_path / "scenario" / "site.toml").is_file()
