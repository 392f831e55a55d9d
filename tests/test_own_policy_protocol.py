"""A policy object that does not meet the protocol is refused before the run (outside test s37
F3: a misspelt ``shedule`` ran all 114 steps with cars on the EDF fallback under the object's
own name; an object without ``name`` raised a bare AttributeError)."""

import pandas as pd
import pytest

import nowblock as nb
from nowblock.seam import Decision

KW = dict(step="1h", days=1)


@pytest.fixture(scope="module")
def scn():
    return nb.Scenario.default(days=1)


class Typo:
    name = "my-algorithm"

    def shedule(self, snapshot):
        return pd.Series(0.0, index=snapshot.cars.index)


class NoName:
    def schedule(self, snapshot):
        return pd.Series(0.0, index=snapshot.cars.index)


class NotCallable:
    name = "not-callable"
    schedule = None


class DecideOnly:
    name = "decide-only"

    def decide(self, snapshot):
        return Decision(pd.Series(0.0, index=snapshot.cars.index))


@pytest.mark.parametrize("policy, words", [
    (Typo(), r"policy: a Typo object is not a policy: no callable `schedule` or `decide` \(it has 'shedule'"),
    (NoName(), r"policy: a NoName object is not a policy: no `name`"),
    (NotCallable(), r"no callable `schedule` or `decide`"),
    (Typo, r"got the class Typo, not a policy object"),
])
def test_a_policy_object_outside_the_protocol_is_refused_before_the_run(scn, policy, words):
    with pytest.raises(TypeError, match=words) as err:
        nb.simulate(scn, policy=policy, **KW)
    assert "nowblock.seam.Policy protocol" in str(err.value) and "own-policy.md" in str(err.value)


def test_a_misspelt_fallback_object_is_refused_too(scn):
    with pytest.raises(TypeError, match=r"fallback: a Typo object is not a policy"):
        nb.simulate(scn, policy="edf", fallback=Typo(), **KW)


def test_get_policy_names_the_protocol():
    with pytest.raises(TypeError, match=r"a Typo object is not a policy.*own-policy\.md"):
        nb.get_policy(Typo())


def test_an_object_with_decide_alone_still_runs_as_itself(scn):
    # decide is what the seam calls first: such a policy is one, and answers every step itself
    res = nb.simulate(scn, policy=DecideOnly(), **KW)
    assert res.metrics["policy"] == "decide-only"
    assert res.metrics["fallback_steps"] == 0
    assert res.metrics["energy_delivered_kwh"] == 0.0 < res.metrics["energy_requested_kwh"]  # its 0 A, not EDF


class NameNone:
    name = None

    def schedule(self, snapshot):
        return pd.Series(0.0, index=snapshot.cars.index)


class BlankName(NameNone):
    name = " "


@pytest.mark.parametrize("policy, words", [(NameNone(), r"no `name`"), (BlankName(), r"`name` ' ' is not")])
def test_the_live_controller_refuses_what_simulate_refuses(scn, policy, words):
    # Such an object passes isinstance(policy, Policy) (the attribute exists): the live controller
    # kept it unchecked and would run and log a policy named None
    from types import SimpleNamespace

    from nowblock.control.controller import Controller
    from nowblock.ocpp.state import LiveState

    with pytest.raises(TypeError, match=words):
        nb.simulate(scn, policy=policy, **KW)
    central = SimpleNamespace(state=LiveState(scn.site))
    with pytest.raises(TypeError, match=r"policy: a \w+ object is not a policy: " + words):
        Controller(central, scn.site, policy, period_s=60)
    # a policy that meets the protocol is still the one the controller runs
    ok = DecideOnly()
    assert Controller(central, scn.site, ok, period_s=60).policy is ok
