"""A car ignoring its limit is never judged "follows, with a meter offset" by a trial whose limit
never came into force (found by a review of the 0 A trial, session 35)."""

import pytest

from test_control import _car_read_at_a_0_a_limit


@pytest.mark.parametrize("variant", ["refused", "unbalance"])
async def test_a_trial_whose_limit_never_came_into_force_trusts_nothing(variant):
    """CP0's car draws 10 A whatever it is sent, with no meter offset. "refused": from step 12
    its charger rejects every profile, so the trial's minimum never comes into force;
    "unbalance": a site with a 20 A unbalance limit, whose pass zeroed the trial. Before: at step
    19 the car's whole 10 A became its "offset", it was trusted and its not-following alarm
    withdrawn, for the rest of the run."""
    seen = []
    kw = dict(refuse_from=12) if variant == "refused" else dict(site_kw={"max_unbalance_a": 20.0})
    steps = await _car_read_at_a_0_a_limit(True, offset=0.0, seen=seen, **kw)
    assert all("CP0:tx0" not in offsets for offsets, _ in seen), [o for o, _ in seen if o]
    assert steps[-1][3] is not None  # still counted at what it may draw
    assert "CP0:tx0" in seen[-1][1]  # and alarmed
