"""``kill -9`` of a real ``nowblock serve`` mid-stream, twice, and a restart on the same database
(x20 and both versions: benchmarks/bench_fuzz.py)."""

from __future__ import annotations

import pytest

from .crash import crash_run


@pytest.mark.slow
async def test_kill_9_mid_stream_loses_no_acknowledged_meter_value(tmp_path):
    res = await crash_run(tmp_path, kills=2, version="1.6", seed=1)
    assert res.kills == 2
    assert len(res.acknowledged) > 20
    assert res.lost == []  # every value that got a CALLRESULT is in the store
    assert res.stop_accepted  # the transaction went on across both restarts and ended normally
    assert res.energy_kwh_stored == pytest.approx(res.energy_kwh_expected)  # the energy adds up
    assert res.tx_profiles_after_restart == res.kills  # the restored transaction is controlled again
