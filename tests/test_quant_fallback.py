"""Sensitivity ranking and accuracy-aware fallback on the trained digits network."""
from __future__ import annotations

import json

import pytest

from mnv4_deploy.errors import UsageError
from mnv4_deploy.quant import accuracy_fallback, layer_sensitivity, output_sqnr
from mnv4_deploy.quant.threads import single_thread

# A recipe too harsh for the budget: 4-bit weights with min-max ranges and no corrections
# lose ~1.7 pt top-1 on the held-out digits; the budget is 0.5 pt.
HARSH = dict(weights__bits=4, activations__estimator="minmax", equalization=False, bias_correction=False)
MAX_DROP = 0.5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def harsh(digits_plans):
    with single_thread():  # module fixtures run before the per-test one_torch_thread
        plan = digits_plans.plan(**HARSH)
        ranking = layer_sensitivity(plan, digits_plans.net.x_calib[:64])
    return plan, ranking


def test_sensitivity_ranks_units_and_names_what_hurts(digits_plans, harsh):
    plan, ranking = harsh
    assert [s.unit for s in ranking] != [] and set(s.unit for s in ranking) == set(plan.units)
    gains = [s.gain_db for s in ranking]
    assert gains == sorted(gains, reverse=True)
    worst = ranking[0]
    # keeping the worst unit float really raises the output SQNR by what the ranking says
    base = output_sqnr(plan, digits_plans.net.x_calib[:64])
    assert output_sqnr(plan, digits_plans.net.x_calib[:64], float_units=[worst.unit]) == pytest.approx(
        base + worst.gain_db, abs=1e-6)
    json.dumps([s.to_dict() for s in ranking])
    single = layer_sensitivity(plan, digits_plans.net.x_calib[:32], mode="one_at_a_time", units=plan.units[:6])
    assert len(single) == 6 and all(s.gain_db == -s.sqnr_db for s in single)


def test_fallback_meets_a_budget_the_plan_alone_misses(digits_plans, harsh):
    plan, ranking = harsh
    net = digits_plans.net

    def drop(candidate) -> float:
        return net.float_top1 - net.top1(digits_plans.quant_logits(candidate, net.x_heldout))

    assert drop(plan) > MAX_DROP  # the situation: the budget is missed without fallback
    result = accuracy_fallback(plan, drop, max_drop=MAX_DROP, max_layers=8, max_tries=20, ranking=ranking,
                               log=lambda _: None)
    assert result.met and result.final_drop <= MAX_DROP < result.initial_drop
    assert 1 <= len(result.kept_float) <= 8
    assert sorted(result.plan.float_layers) == sorted(result.kept_float)
    assert drop(result.plan) == pytest.approx(result.final_drop)
    assert all(s.reason for s in result.steps) and json.dumps(result.to_dict())


def test_fallback_stops_at_max_layers_and_says_so(digits_plans, harsh):
    plan, ranking = harsh
    calls = []

    def never_good_enough(candidate) -> float:
        calls.append(candidate)
        return 5.0 - 0.1 * len(candidate.float_units)

    result = accuracy_fallback(plan, never_good_enough, max_drop=0.1, max_layers=2, ranking=ranking,
                               log=lambda _: None)
    assert not result.met and len(result.kept_float) == 2 and len(calls) == 3
    with pytest.raises(UsageError):
        accuracy_fallback(plan, never_good_enough, max_drop=0.1)  # neither ranking nor data
