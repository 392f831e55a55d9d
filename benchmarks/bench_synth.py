"""Scenario generation speed: the default block and the benchmark-size block.

Baseline in the same run: reading the very same scenario back from its folder
(``Scenario.from_dir``), the other way a benchmark gets a scenario.

    pytest benchmarks/bench_synth.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import pytest

from nowblock.block.scenario import Scenario
from nowblock.block.scenario import generate_block

pytest.importorskip("pytest_benchmark")

SIZES = {"default": {}, "200cp-30d": {"n_charge_points": 200, "days": 30}}


@pytest.mark.parametrize("size", SIZES)
def test_generate(benchmark, size):
    generate_block(**SIZES[size])  # warm the in-process H0 cache, as every later call finds it
    scn = benchmark(generate_block, **SIZES[size])
    benchmark.extra_info["sessions"] = len(scn.sessions)


@pytest.mark.parametrize("size", SIZES)
def test_read_folder_baseline(benchmark, size, tmp_path):
    path = generate_block(**SIZES[size]).to_dir(tmp_path / size)
    scn = benchmark(Scenario.from_dir, path)
    benchmark.extra_info["sessions"] = len(scn.sessions)


def test_generate_cold(benchmark):
    """First call in a process: includes demandlib building a year of H0."""
    from nowblock.block import synth

    def cold():
        synth._slp_year_kw_per_mwh.cache_clear()
        return generate_block()

    benchmark.pedantic(cold, rounds=5, iterations=1)
