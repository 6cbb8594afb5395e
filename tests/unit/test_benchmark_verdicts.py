"""How `make bench` judges a target against its run's noise floor (from the A/A control)."""

from __future__ import annotations

import pytest
from benchmark import AA_CONTROL, Report, judge, median, noise_floor


def control(rounds: list[float]) -> Report:
    return Report(machine={}, settings={}, ratios={AA_CONTROL: {"median": median(rounds), "rounds": rounds}})


def test_noise_floor_is_the_standard_error_of_a_median_of_the_control_rounds():
    rounds = [0.90, 0.95, 1.00, 1.05, 1.10, 1.00, 0.98, 1.02, 1.00]  # quartiles 0.98 and 1.02, median 1
    assert noise_floor(control(rounds)) == pytest.approx(0.04 / 1.35 * 1.25 / 3)


def test_noise_floor_includes_the_control_medians_distance_from_one():
    rounds = [1.08, 1.10, 1.06, 1.085, 1.07, 1.09, 1.085, 1.085, 1.085]  # quartiles 1.08, 1.085
    spread = 0.005 / 1.35 * 1.25 / 3
    assert noise_floor(control(rounds)) == pytest.approx((spread**2 + 0.085**2) ** 0.5)


@pytest.mark.parametrize(
    ("cost", "target", "noise", "verdict"),
    [
        (0.066, 0.10, 0.01, True),  # two floors under the target
        (0.143, 0.10, 0.015, False),  # two floors over it
        (0.106, 0.10, 0.044, None),  # 0.14 floors over it: either side
        (0.052, 0.03, 0.044, None),
        (-0.02, 0.03, 0.02, True),  # cheaper than "off" by more than the noise
        (0.03, 0.03, 0.0, True),  # at the target, on a noiseless run
    ],
)
def test_a_cost_within_two_noise_floors_of_its_target_is_unresolved(cost, target, noise, verdict):
    assert judge(cost, target, noise, at_least=False) is verdict


@pytest.mark.parametrize(
    ("ratio", "target", "noise", "verdict"),
    [(1.67, 1.5, 0.05, True), (1.4, 1.5, 0.04, False), (0.95, 1.0, 0.06, None)],
)
def test_a_ratio_must_reach_its_target_by_two_noise_floors(ratio, target, noise, verdict):
    assert judge(ratio, target, noise) is verdict
