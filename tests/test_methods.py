"""Tests for tfqat.flowers.methods: the registry of quantization methods that the pipeline, report and study read."""

import pytest

from tfqat.flowers import methods
from tfqat.flowers.methods import METHODS, Recipe
from tfqat.flowers.options import RunOptions


def test_every_method_has_its_own_stage_file_and_label():
    assert len({m.file for m in METHODS.values()} | {methods.FLOAT_FILE}) == len(METHODS) + 1
    assert len({m.label for m in METHODS.values()}) == len(METHODS)
    assert all(name == m.name for name, m in METHODS.items())
    assert methods.STAGES == ("float", *METHODS)


def test_the_default_run_and_the_published_files_are_the_reference_tables():
    assert methods.DEFAULT_METHODS == (
        "float_continued", "ptq", "ptq_equalized", "ptq_tuned", "qat_tqt_tuned_slow", "tflite_ptq", "tfmot_qat",
    )
    published = ["ptq", "ptq_equalized", "ptq_tuned", "qat_tqt_tuned_slow", "qat_tqt_per_channel"]  # + the per-channel row
    assert [n for n, m in METHODS.items() if m.published] == published
    assert methods.DEFAULT_QAT == "qat_tqt_tuned_slow"  # chosen over seeds 0-4 on validation (docs/experiments.md)
    assert {n for n, m in METHODS.items() if m.peer} == {"tflite_ptq", "tfmot_qat"}
    # tfqat's own methods are shift-only power-of-two recipes; the peers and the float control have none.
    assert all((m.recipe is None) == (m.peer or m.control) for m in METHODS.values())
    assert [n for n, m in METHODS.items() if m.control] == [methods.CONTROL] == ["float_continued"]


def test_parse_methods_keeps_order_drops_repeats_and_names_the_valid_choices():
    assert methods.parse_methods("qat, ptq,qat") == ("qat", "ptq")
    with pytest.raises(ValueError, match="unknown method 'qta'; choose from float_continued, ptq, ptq_equalized"):
        methods.parse_methods("qat,qta")
    with pytest.raises(ValueError, match="no method named"):
        methods.parse_methods(" , ")


def test_run_flags_switch_recipe_fields_on():
    ptq, qat = Recipe(), Recipe(train=True)
    flags = dict(per_channel=True, equalize=True, distillation=True, trained_thresholds=True, unsigned_activations=False)
    assert ptq.with_run_flags(**flags) == Recipe(per_channel=True)  # QAT-only flags leave PTQ alone
    assert qat.with_run_flags(**flags) == Recipe(
        train=True, per_channel=True, equalize=True, distillation=True, trained_thresholds=True
    )
    assert ptq.with_run_flags(**{**flags, "unsigned_activations": True}).unsigned_activations
    off = dict(per_channel=False, equalize=False, distillation=False, trained_thresholds=False)
    assert METHODS["qat_tqt_equalized"].recipe.with_run_flags(**off) == METHODS["qat_tqt_equalized"].recipe


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=-1, train=True), "epochs=-1"),
        (dict(learning_rate=0.0, train=True), "learning_rate=0.0"),
        (dict(distillation=True), "need train=True"),
        (dict(train=True, frozen_threshold_epochs=2), "trained_thresholds=True"),
        (dict(train=True, trained_thresholds=True, frozen_threshold_epochs=0), "frozen_threshold_epochs=0"),
    ],
)
def test_bad_recipes_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**kwargs)


def test_the_calibrated_start_ignores_how_qat_trains():
    frozen = METHODS["qat_tqt_frozen"].recipe
    assert frozen.frozen_threshold_epochs and frozen.calibration() == METHODS["qat_tqt"].recipe.calibration()
    slow = METHODS["qat_tqt_tuned_slow"].recipe
    assert METHODS["qat_tqt_tuned"].recipe.learning_rate is None  # the run's --qat-learning-rate
    assert slow.learning_rate == RunOptions().qat_learning_rate / 10
    assert slow.calibration() == METHODS["qat_tqt_tuned"].recipe.calibration()
