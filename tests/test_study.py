"""Tests for tfqat.flowers.study: the multi-seed table from per-seed run results (no training here)."""

import json
import re

import numpy as np
import pytest

from tfqat import cli
from tfqat.evaluation.stats import paired_difference
from tfqat.flowers.study import StudyOptions, render_markdown, summarize, write_study

LABELS = np.array([0, 1, 2, 3, 4] * 4)


def _model(predictions, **extra):
    predictions = np.asarray(predictions)
    return {"accuracy": float(np.mean(predictions == LABELS)), "predictions": predictions.tolist(), **extra}


def _seed_results(float_predictions, method_predictions, seconds):
    models = {"float": _model(float_predictions, validation_accuracy=0.9, validation_loss=0.3)}
    versus = {}
    for name, predictions in method_predictions.items():
        models[name] = _model(
            predictions, validation_accuracy=0.8, validation_loss=0.4, agreement={"top1_agreement": 1.0},
            verify={"passed": True}, training={name: {"kept_epoch": 3}},
        )
        versus[name] = paired_difference(float_predictions == LABELS, np.asarray(predictions) == LABELS)
    return {"models": models, "versus_float": versus, "stage_seconds": {name: seconds for name in method_predictions},
            "data": {"split_sizes": {"train": 60, "validation": 316, "test": len(LABELS)}}}


def _flip(predictions, indices):
    flipped = predictions.copy()
    flipped[indices] = (flipped[indices] + 1) % 5
    return flipped


@pytest.fixture
def study():
    seed0 = _seed_results(LABELS, {"qat": _flip(LABELS, [0, 1]), "qat_tqt": LABELS}, 100.0)
    float1 = _flip(LABELS, [5])
    seed1 = _seed_results(float1, {"qat": _flip(float1, [0]), "qat_tqt": LABELS}, 200.0)
    options = StudyOptions(seeds=(0, 1), methods=("qat", "qat_tqt", "qat_per_channel"))
    return summarize(options, {0: seed0, 1: seed1})


def test_the_mean_difference_is_the_mean_of_each_seeds_paired_difference(study):
    qat = study["methods"]["qat"]
    assert qat["seeds"]["0"]["difference"] == pytest.approx(-2 / 20)
    assert qat["seeds"]["1"]["difference"] == pytest.approx(-1 / 20)
    assert qat["difference"]["mean"] == pytest.approx(-1.5 / 20)
    assert (qat["difference"]["min"], qat["difference"]["max"]) == (pytest.approx(-0.1), pytest.approx(-0.05))
    assert (qat["only_float"], qat["only_method"]) == (3, 0)
    tqt = study["methods"]["qat_tqt"]
    assert tqt["difference"]["mean"] == pytest.approx(0.5 / 20)  # seed 1: one image only TQT gets right
    assert (tqt["only_float"], tqt["only_method"]) == (0, 1)
    assert tqt["seconds"]["mean"] == 150.0 and tqt["verified"] is True and tqt["complete"]


def test_a_method_not_yet_run_is_reported_as_incomplete(study):
    missing = study["methods"]["qat_per_channel"]
    assert missing["seeds"] == {} and not missing["complete"] and missing["difference"]["mean"] is None
    text = render_markdown(study)
    assert "qat_per_channel: not yet run on every seed" in text


def test_markdown_has_one_row_per_method_and_one_per_method_and_seed(study, tmp_path):
    text = render_markdown(study)
    assert "| qat | 2 | 0.9000 | **-7.50** | -10.00 to -5.00 | - | 3 / 0 |" in text  # no control ran: "-"
    assert text.count("| qat | 0 |") == 1 and text.count("| qat_tqt | 1 |") == 1
    paths = write_study(study, tmp_path)
    assert json.loads(paths["json"].read_text())["methods"]["qat"]["only_float"] == 3
    assert paths["markdown"].read_text() == text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["study", "--methods", "qat,nope"], "unknown method 'nope'"),
        (["study", "--seeds", "0,x"], "--seeds takes comma-separated whole numbers"),
        (["study", "--seeds", "1,1"], "each once"),
        (["study", "--candidates", "qat_tqt,nope"], "unknown method 'nope'"),
        (["study", "--methods", "qat_tqt", "--candidates", "qat_tqt,qat_tqt_tuned"], "qat_tqt_tuned not among"),
    ],
)
def test_bad_study_arguments_are_one_line_errors(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_every_method_is_also_paired_with_its_seeds_float_control():
    """The control (float trained as long as QAT) is a row of its own, and each method's difference to it is
    the mean over seeds of the paired difference to that seed's control."""
    from tfqat.flowers.methods import CONTROL

    results = {}
    for seed, (control, qat) in enumerate([(_flip(LABELS, [0]), LABELS), (LABELS, _flip(LABELS, [1, 2]))]):
        seed_results = _seed_results(LABELS, {CONTROL: control, "qat_tqt": qat}, 10.0)
        seed_results["models"][CONTROL].pop("verify")  # a float model: nothing verified
        seed_results["versus_control"] = {"qat_tqt": paired_difference(control == LABELS, qat == LABELS)}
        results[seed] = seed_results
    study = summarize(StudyOptions(seeds=(0, 1), methods=(CONTROL, "qat_tqt")), results)
    tqt, control = study["methods"]["qat_tqt"], study["methods"][CONTROL]
    assert [tqt["seeds"][s]["control_difference"] for s in ("0", "1")] == [pytest.approx(1 / 20), pytest.approx(-2 / 20)]
    assert tqt["control_difference"]["mean"] == pytest.approx(-0.5 / 20)
    assert control["difference"]["mean"] == pytest.approx(-0.5 / 20) and control["verified"] is None
    text = render_markdown(study)
    assert "| qat_tqt | 2 | 0.9500 | **-5.00** | -10.00 to +0.00 | -2.50 | 2 / 0 |" in text
    assert f"| {CONTROL} | 2 |" in text and "float control" in text


def test_the_study_reports_the_rules_choice_once_every_candidate_ran_on_every_seed():
    seed = _seed_results(LABELS, {"qat": _flip(LABELS, [0]), "qat_tqt": LABELS}, 1.0)
    seed["models"]["qat_tqt"]["validation_accuracy"] = 0.9  # qat: 0.8, more than one of 316 images lower
    results = {0: seed, 1: seed}
    pending = summarize(StudyOptions(seeds=(0, 1), methods=("qat", "qat_tqt", "qat_per_channel"),
                                     candidates=("qat", "qat_per_channel")), results)
    assert pending["default"]["chosen"] is None and "qat_per_channel" in pending["default"]["pending"]
    assert "Not decided: the rule needs every candidate on all 2 seeds" in render_markdown(pending)
    decided = summarize(StudyOptions(seeds=(0, 1), methods=("qat", "qat_tqt"), candidates=("qat", "qat_tqt")), results)
    assert decided["validation_images"] == 316
    assert decided["default"]["chosen"] == "qat_tqt" and not decided["default"]["tied"]
    assert "**Chosen: `qat_tqt`.**" in render_markdown(decided)


@pytest.mark.parametrize(
    "candidates, message",
    [
        (("qat_tqt", "qat_tqt_tuned"), "qat_tqt_tuned not among its methods (qat_tqt, tflite_ptq)"),
        (("qat_tqt", "tflite_ptq"), "tflite_ptq has no Keras model to validate"),
        (("qat_tqt",), "it needs two to choose between"),
    ],
)
def test_candidates_must_be_two_or_more_of_the_studys_own_models(candidates, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        StudyOptions(methods=("qat_tqt", "tflite_ptq"), candidates=candidates)


def test_a_method_from_an_earlier_machine_keeps_its_own_float_model_and_control():
    """A seed split by a machine change: this machine's float model and control, and a method that only the
    earlier machine finished, paired with that machine's float model and control (docs/experiments.md)."""
    from tfqat.flowers.methods import CONTROL

    def seed_results(float_predictions, control, qat):
        results = _seed_results(float_predictions, {CONTROL: control, **({"qat_tqt": qat} if qat is not None else {})}, 1.0)
        results["versus_control"] = {} if qat is None else {"qat_tqt": paired_difference(control == LABELS, qat == LABELS)}
        return results

    here = seed_results(LABELS, _flip(LABELS, [0]), None)  # the new machine: float and control, no QAT yet
    earlier_float = _flip(LABELS, [1, 2])
    earlier = seed_results(earlier_float, _flip(LABELS, [1]), _flip(LABELS, [3]))  # the machine that was replaced
    options = StudyOptions(seeds=(0,), methods=(CONTROL, "qat_tqt"))
    study = summarize(options, {0: here}, {0: [earlier]})
    tqt = study["methods"]["qat_tqt"]["seeds"]["0"]
    assert tqt["earlier_machine"] and tqt["float_accuracy"] == pytest.approx(18 / 20)  # its own float model
    assert tqt["difference"] == pytest.approx(1 / 20) and tqt["control_difference"] == pytest.approx(0.0)
    control = study["methods"][CONTROL]["seeds"]["0"]
    assert "earlier_machine" not in control and control["float_accuracy"] == 1.0  # this machine's own, preferred
    assert study["float"]["seeds"]["0"]["accuracy"] == 1.0
    text = render_markdown(study)
    assert "| qat_tqt | 0 (earlier machine) | 0.9500 | 0.9000 | +5.00 | +0.00 |" in text
    assert "\"(earlier machine)\": the method ran from the float model" in text
    assert "(earlier machine)" not in render_markdown(summarize(options, {0: here}))
