"""A run folder's list of finished fits: a fit is kept only with the very weights files it recorded."""

from tfqat._keras import keras

import h5py
import numpy as np

from tfqat.flowers.fits import FITS, FinishedFits, save_weights_atomic


def _model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()])


def test_weights_are_written_whole_in_kerass_format_and_load_back(tmp_path):
    model = _model(0)
    save_weights_atomic(model, tmp_path / "a.weights.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["a.weights.h5"]  # no temporary file left
    with h5py.File(tmp_path / "a.weights.h5") as written:  # the format `model.save_weights` gives the name
        assert "vars" in written["layers"]["dense"]
    other = _model(1)
    other.load_weights(str(tmp_path / "a.weights.h5"))
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_fit_is_kept_with_its_own_files_only(tmp_path):
    start, weights = tmp_path / "float.weights.h5", tmp_path / "qat.weights.h5"
    save_weights_atomic(_model(0), start)
    assert FinishedFits(tmp_path).kept("qat", weights, start) is None  # no fit listed, no file
    save_weights_atomic(_model(1), weights)
    assert FinishedFits(tmp_path).kept("qat", weights, start) is None  # a file no fit recorded
    FinishedFits(tmp_path).save("qat", weights, start, same_fit_as="twin")
    assert (tmp_path / FITS).is_file()
    assert FinishedFits(tmp_path).kept("qat", weights, start)["same_fit_as"] == "twin"
    assert FinishedFits(tmp_path).kept("other", weights, start) is None
    save_weights_atomic(_model(2), weights)  # the stage trained again and stopped before recording its fit
    assert FinishedFits(tmp_path).kept("qat", weights, start) is None
    FinishedFits(tmp_path).save("qat", weights, start)
    save_weights_atomic(_model(3), start)  # the float model it started from is another one now
    assert FinishedFits(tmp_path).kept("qat", weights, start) is None
    start.unlink()
    assert FinishedFits(tmp_path).kept("qat", weights, start) is None
