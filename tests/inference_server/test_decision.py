"""Operating points, temperature scaling and calibration error."""

from __future__ import annotations

import numpy as np
import pytest

from inference_server.calibration import (
    ece,
    fit_label_temperature,
    fit_review_platt,
    fit_review_temperature,
    label_calibration,
    reliability,
    review_calibration,
)
from inference_server.decision import (
    OperatingPoint,
    choose_homework,
    choose_review,
    from_card,
    labels,
    resolve,
    reviews,
)

P = np.array(
    [
        [0.30, 0.10, 0.05, 0.05, 0.50],  # none wins the argmax, P(homework) = 0.5
        [0.10, 0.20, 0.05, 0.05, 0.60],  # P(homework) = 0.4
        [0.05, 0.05, 0.80, 0.05, 0.05],
    ],
    np.float32,
)


def test_homework_is_called_on_the_sum_of_the_homework_labels() -> None:
    assert labels(P, OperatingPoint(homework=0.5)) == ["practice", "none", "journal"]
    assert labels(P, OperatingPoint(homework=0.35)) == ["practice", "take_action", "journal"]
    assert labels(P, OperatingPoint(homework=0.9)) == ["none", "none", "journal"]
    assert reviews(np.array([0.2, 0.7], np.float32), OperatingPoint(review=0.6)) == [False, True]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_thresholds_outside_the_unit_interval_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        OperatingPoint(homework=bad)


def test_points_come_from_the_card_and_settings_override_them() -> None:
    card = {"operating_points": {"balanced": {"homework": 0.4, "review": 0.3}}}
    assert from_card(card) == OperatingPoint(0.4, 0.3)
    assert resolve(card, review=0.8) == OperatingPoint(0.4, 0.8)
    assert from_card({}) == OperatingPoint(0.5, 0.5)  # weights from before operating points
    with pytest.raises(ValueError, match="no operating point 'precision'"):
        from_card(card, "precision")


def test_review_threshold_maximises_f1_or_meets_the_precision_target() -> None:
    gold = [False, False, True, True, False, True, True]
    probs = np.array([0.1, 0.3, 0.35, 0.6, 0.65, 0.8, 0.9], np.float32)
    best = choose_review(gold, probs)
    pred = probs >= best
    assert pred.tolist() == [False, False, True, True, True, True, True]  # F1 0.89
    strict = choose_review(gold, probs, precision_target=0.99)
    assert (probs >= strict).tolist() == [False] * 5 + [True, True]


def test_homework_threshold_is_chosen_on_mean_f1() -> None:
    gold = ["none", "take_action", "journal"]
    assert choose_homework(gold, P) <= 0.4  # catching the take_action is worth it
    assert choose_homework(["none", "none", "journal"], P) > 0.5


def test_temperature_scaling_cools_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    gold = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5))
    logits[np.arange(n), gold] += 1.0  # right more often than not
    hot = logits * 6  # far too sure
    t = fit_label_temperature(hot, gold.tolist())
    assert 4 < t < 8
    before = label_calibration(np.exp(hot) / np.exp(hot).sum(1, keepdims=True), gold.tolist())
    cooled = np.exp(hot / t) / np.exp(hot / t).sum(1, keepdims=True)
    after = label_calibration(cooled, gold.tolist())
    assert after["ece"] < before["ece"] / 3
    review_gold = rng.random(n) < 1 / (1 + np.exp(-logits[:, 0]))
    assert 4 < fit_review_temperature(logits[:, 0] * 6, review_gold.tolist()) < 8


def test_platt_scaling_fixes_a_review_head_that_is_both_hot_and_shifted() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 4000)
    gold = (rng.random(4000) < 1 / (1 + np.exp(-(z - 2)))).tolist()  # truly: sigmoid(z - 2)
    served = z * 3 + 1.5  # too sure, and too ready to say review
    scale, bias = fit_review_platt(served, gold)
    assert abs(scale - 1 / 3) < 0.05 and abs(bias - (-2.5)) < 0.3
    before = review_calibration(1 / (1 + np.exp(-served)), gold)["ece"]
    after = review_calibration(1 / (1 + np.exp(-(served * scale + bias))), gold)["ece"]
    assert after < 0.03 < before
    assert fit_review_platt(served, [False] * 4000) == (1.0, 0.0)  # one class: left alone


def test_reliability_bins_and_ece() -> None:
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    hit = np.array([1, 1, 1, 0])
    rows = reliability(conf, hit)
    assert [r["n"] for r in rows] == [2, 2]
    assert rows[0]["accuracy"] == 0.5 and rows[1]["accuracy"] == 1.0
    assert ece(conf, hit) == pytest.approx((2 * 0.05 + 2 * 0.05) / 4)


def test_the_precision_point_never_cuts_below_the_balanced_one() -> None:
    from inference_server.decision import choose_points

    # Mean F1 is best at a high cut here, higher than the lowest cut with 90% precision.
    gold = ["none"] * 6 + ["journal"] * 4
    probs = np.array(
        [[0.0, 0.0, h, 0.0, 1 - h] for h in (0.1, 0.2, 0.3, 0.62, 0.1, 0.1, 0.65, 0.7, 0.8, 0.9)],
        np.float32,
    )
    points = choose_points(gold, [False] * 10, probs, np.zeros(10, np.float32))
    assert points["precision"].homework >= points["balanced"].homework
    assert points["precision"].review >= points["balanced"].review


def test_homework_is_cut_on_the_real_talk_units_of_dev() -> None:
    """Dev mixes real talk with our own writing: the homework cuts are chosen on the real-talk
    units alone (at the temperature fitted on all of dev); temperatures, review cuts and the
    calibration report come from all of dev."""
    from inference_server.decision import choose_points
    from inference_server.labels import LABELS
    from inference_server.train import MIN_REAL_FOR_LABELS, DevOutput, calibrate, softmax

    rng = np.random.default_rng(7)
    n, ours = MIN_REAL_FOR_LABELS * 2, MIN_REAL_FOR_LABELS * 6
    journal, none = LABELS.index("journal"), LABELS.index("none")
    gold, logits = [], np.full((n + ours, len(LABELS)), -6.0, np.float32)
    for i in range(n + ours):
        real, homework = i < n, i % 2 == 0
        gold.append("journal" if homework else "none")
        # P(homework) ~ sigmoid(margin): real talk's homework is said softly (about 0.4); our
        # writing, three times as much of it, has hard negatives that look like homework.
        margin = {(True, True): -0.4, (True, False): -3.0,
                  (False, True): 4.0, (False, False): 0.4}[(real, homework)]  # fmt: skip
        margin += rng.normal(0, 0.05)
        logits[i, journal], logits[i, none] = margin / 2, -margin / 2
    out = DevOutput(logits, rng.normal(0, 2, n + ours).astype(np.float32))
    review = [bool(x) for x in rng.integers(0, 2, n + ours)]
    mixed = calibrate(out, gold, review, real=[i < n for i in range(n + ours)])
    everything = calibrate(out, gold, review)

    assert mixed.label_temperature == everything.label_temperature
    assert mixed.review_scale == everything.review_scale
    assert mixed.review_bias == everything.review_bias
    assert mixed.after == everything.after
    probs = softmax(logits[:n] / mixed.label_temperature)
    on_real = choose_points(gold[:n], [False] * n, probs, np.zeros(n, np.float32))
    for name in ("balanced", "precision"):
        assert mixed.points[name].homework == on_real[name].homework
        assert mixed.points[name].review == everything.points[name].review
    assert mixed.points["balanced"].homework != everything.points["balanced"].homework
    # Too few real-talk units: everything is chosen on all of dev.
    few = [i < MIN_REAL_FOR_LABELS - 1 for i in range(n + ours)]
    assert calibrate(out, gold, review, real=few).points == everything.points


def test_review_is_calibrated_by_the_method_the_config_names() -> None:
    from inference_server.train import DevOutput, calibrate

    rng = np.random.default_rng(4)
    n = 2000
    z = rng.normal(0, 2, n)
    review = (rng.random(n) < 1 / (1 + np.exp(-(z - 2)))).tolist()
    out = DevOutput(rng.normal(0, 1, (n, 5)).astype(np.float32), (z * 3 + 1.5).astype(np.float32))
    gold = ["none"] * n
    temperature = calibrate(out, gold, review, review_method="temperature")
    platt = calibrate(out, gold, review)  # the default, as in TrainConfig
    assert temperature.review_bias == 0.0 and temperature.review_scale < 1
    assert temperature.card()["review_temperature"] == 1 / temperature.review_scale
    assert platt.card()["review_calibration"] == "platt"
    assert "review_temperature" not in platt.card()
    assert abs(platt.review_bias - (-2.5)) < 0.3
    assert platt.after["review"]["ece"] < 0.03 < temperature.after["review"]["ece"]
