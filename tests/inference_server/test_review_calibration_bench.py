"""`bench/review_calibration.py` fits out of sample: a shifted review head is fixed by Platt
scaling and not by a temperature, and every unit is scored by fits that never saw its
conversation. The run on the shipped weights needs the shared data; it is not run here."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from inference_server.calibration import review_calibration
from tests.inference_server.bench_scripts import load_bench


def _script() -> ModuleType:
    return load_bench("review_calibration")


def test_platt_fixes_a_shift_a_temperature_cannot() -> None:
    script = _script()
    rng = np.random.default_rng(2)
    n = 3000
    true_logit = rng.normal(-2, 2, n)
    gold = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).tolist()
    served = true_logit + 2.0  # too ready to say review everywhere
    groups = [f"c{i // 6}" for i in range(n)]
    out = script.crossfit(served, gold, groups)
    ece = {name: review_calibration(p, gold)["ece"] for name, p in out.items()}
    assert ece["platt"] < 0.03 < ece["served"]
    assert ece["platt"] < ece["temperature"]
    assert script.log_loss(out["platt"], gold) < script.log_loss(out["served"], gold)


def test_a_conversation_is_never_scored_by_a_fit_that_saw_it() -> None:
    script = _script()
    # Every review sits in one conversation, with the highest logits: any fit that saw it would
    # give those units a high P(review); fits without it have no review to learn from.
    logits = np.linspace(-4, 4, 60)
    gold = [i >= 54 for i in range(60)]
    groups = ["reviews" if g else f"c{i // 3}" for i, g in enumerate(gold)]
    out = script.crossfit(logits, gold, groups)
    for name in ("temperature", "platt", "isotonic"):
        assert np.all(out[name][54:] == 0.0), name
