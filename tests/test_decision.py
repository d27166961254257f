"""Tests for tfqat.flowers.decision: the committed rule that picks the default among candidates."""

import pytest

from tfqat.flowers.decision import LOSS_TIE, choose_default

VALIDATION = 316  # one image: 0.0032


def _methods(**numbers):
    """name -> (mean validation accuracy, mean validation loss), as `summarize` reports them over 5 seeds."""
    return {
        name: {"seeds": {str(s): {} for s in range(5)}, "validation_accuracy": {"mean": accuracy},
               "validation_loss": {"mean": loss}}
        for name, (accuracy, loss) in numbers.items()
    }


def test_more_than_one_image_ahead_on_accuracy_wins_whatever_the_loss():
    methods = _methods(qat_tqt=(0.9200, 0.20), qat_tqt_tuned=(0.9240, 0.30))
    decision = choose_default(methods, ("qat_tqt", "qat_tqt_tuned"), VALIDATION, 5)
    assert decision.chosen == "qat_tqt_tuned" and not decision.tied and len(decision.steps) == 1


def test_an_accuracy_tie_goes_to_the_lower_loss():
    methods = _methods(qat_tqt=(0.9200, 0.25), qat_tqt_tuned=(0.9230, 0.26), qat_tqt_frozen=(0.9210, 0.24))
    decision = choose_default(methods, ("qat_tqt", "qat_tqt_tuned", "qat_tqt_frozen"), VALIDATION, 5)
    assert decision.chosen == "qat_tqt_frozen" and not decision.tied
    assert "qat_tqt_frozen (0.2400)" in decision.steps[-1]


def test_a_candidate_out_of_the_accuracy_tie_cannot_win_on_loss():
    methods = _methods(qat_tqt=(0.9240, 0.30), qat_tqt_tuned=(0.9200, 0.10))
    assert choose_default(methods, ("qat_tqt", "qat_tqt_tuned"), VALIDATION, 5).chosen == "qat_tqt"


def test_a_tie_on_both_keeps_the_incumbent():
    methods = _methods(qat_tqt=(0.9200, 0.250), qat_tqt_tuned=(0.9220, 0.250 - LOSS_TIE / 2))
    decision = choose_default(methods, ("qat_tqt", "qat_tqt_tuned"), VALIDATION, 5)
    assert decision.chosen == "qat_tqt" and decision.tied and "the incumbent qat_tqt stays" in decision.steps[-1]


def test_the_rule_waits_for_every_seed_of_every_candidate():
    methods = _methods(qat_tqt=(0.92, 0.2), qat_tqt_tuned=(0.93, 0.2))
    methods["qat_tqt_tuned"]["seeds"].pop("4")
    with pytest.raises(ValueError, match="not yet: qat_tqt_tuned"):
        choose_default(methods, ("qat_tqt", "qat_tqt_tuned"), VALIDATION, 5)


def test_exactly_one_image_apart_is_not_a_tie():
    """Means over seeds of counts out of 316: one image more on every seed is one image on the mean."""
    counts = [290, 289, 292, 288, 291]
    first = sum(c / VALIDATION for c in counts) / 5
    second = sum((c + 1) / VALIDATION for c in counts) / 5
    methods = _methods(qat_tqt=(first, 0.1), qat_tqt_tuned=(second, 0.3))
    assert choose_default(methods, ("qat_tqt", "qat_tqt_tuned"), VALIDATION, 5).chosen == "qat_tqt_tuned"


def test_a_tie_without_the_incumbent_goes_to_the_tied_candidate_with_the_higher_accuracy():
    methods = _methods(qat_tqt=(0.9000, 0.20), qat_tqt_tuned=(0.9500, 0.200), qat_tqt_frozen=(0.9490, 0.201))
    decision = choose_default(methods, ("qat_tqt", "qat_tqt_tuned", "qat_tqt_frozen"), VALIDATION, 5)
    assert decision.chosen == "qat_tqt_tuned" and decision.tied and "without the incumbent" in decision.steps[-1]


def test_a_candidate_without_validation_numbers_is_a_clear_error():
    methods = _methods(qat_tqt=(0.92, 0.2), tflite_ptq=(None, None))
    with pytest.raises(ValueError, match="no validation numbers for tflite_ptq"):
        choose_default(methods, ("qat_tqt", "tflite_ptq"), VALIDATION, 5)
