"""``kill -9`` of a real ``nowblock serve`` mid-stream and a restart on the same database, once a
protocol version (x20: benchmarks/bench_fuzz.py)."""

from __future__ import annotations

import pytest

from .crash import crash_run


@pytest.mark.slow
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_kill_9_mid_stream_loses_no_acknowledged_meter_value(tmp_path, version):
    res = await crash_run(tmp_path, kills=1, version=version, seed=1)
    assert res.kills == 1
    assert len(res.acknowledged) > 10
    assert res.lost == []  # every value that got a CALLRESULT is in the store
    assert res.stop_accepted  # the transaction went on across the restart and ended normally
    assert res.energy_kwh_stored == pytest.approx(res.energy_kwh_expected)  # the energy adds up
    assert res.tx_profiles_after_restart == res.kills  # the restored transaction is controlled again
