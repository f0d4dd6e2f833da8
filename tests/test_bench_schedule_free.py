"""bench/schedule_free_eval.py: the same training, scored at the averaged and at the training weights."""

from __future__ import annotations

from bench import schedule_free_eval


def test_the_two_arms_train_alike_and_differ_only_in_the_weights_they_score():
    averaged = schedule_free_eval.accuracy(0.01, 0, True, 1)
    training = schedule_free_eval.accuracy(0.01, 0, False, 1)
    assert 0.3 < averaged < 1 and 0.3 < training < 1 and averaged != training
    assert schedule_free_eval.accuracy(0.01, 0, True, 1) == averaged  # seeded: the same run again
