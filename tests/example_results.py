"""An example results dict, as the pipeline saves it in results.json, shared by the report, plot and range tests."""

import numpy as np

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def _confusion(seed, correct):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, size=(5, 5))
    np.fill_diagonal(counts, correct)
    return counts.tolist()


def _verify(passed, failures=(), exceptions=()):
    verdict = "PASSED" if passed else f"FAILED: {len(failures)} check(s) failed"
    return {
        "passed": passed,
        "summary": f"model.tflite: {verdict}\n  ops: 66",
        "failures": list(failures),
        "named_exceptions": list(exceptions),
    }


def _training(kept, *val_losses):
    """A logged fit: epochs with falling then rising validation loss, and the epoch it kept."""
    epochs = [
        {"epoch": i + 1, "accuracy": 0.8 + 0.02 * i, "loss": 0.6 - 0.05 * i, "val_accuracy": 0.9 + 0.005 * i,
         "val_loss": value}
        for i, value in enumerate(val_losses)
    ]
    return {"epochs": epochs, "kept_epoch": kept}


def _model(title, accuracy, per_class, engine, file, size, seed, **extra):
    return {
        "title": title, "accuracy": accuracy, "per_class": dict(zip(CLASSES, per_class)), "engine": engine,
        "file": file, "size_bytes": size, "confusion": _confusion(seed, 100), **extra,
    }


def example_results():
    mean_exception = "MEAN block_16: multiplier 1/49 (average pool over 7x7), not a shift"
    return {
        "command": "tfqat run --data ../shared/data/flower_photos --weights w.h5 --out runs/flowers",
        "versions": {"tfqat": "0.1.0", "tensorflow": "2.21.0", "tf_keras": "2.21.0", "tfmot": "0.8.1",
                     "ai_edge_litert": "2.3.0", "python": "3.11.7", "platform": "Linux-x86_64"},
        "started": "2026-11-28T02:10:00Z", "written": "2026-11-28T02:45:00Z", "seed": 0, "quick": False,
        "data": {
            "source": "/work/shared/data/flower_photos", "classes": CLASSES,
            "split_sizes": {"train": 2021, "validation": 316, "test": 593},
            "skipped": [{"source": "roses/broken.jpg", "reason": "not a decodable image"},
                        {"source": "tulips/dup.jpg", "reason": "duplicate of tulips/a.jpg"}],
            "image_contract": "RGB, resized to 224x224 (bilinear), float32 in [-1, 1]",
        },
        "reference": {"float": 0.8965, "ptq": 0.2943, "qat": 0.8910},
        "models": {
            "float": _model("original float network", 0.93125, [0.9, 0.95, 0.88, 0.97, 0.91], "Keras",
                            "flowers_mobilenet_v2_float.tflite", 8_900_000, 0, tflite_accuracy=0.92917,
                            validation_accuracy=0.92089, accuracy_interval=[0.90784, 0.94953],
                            training={"head": _training(3, 0.5, 0.4, 0.35),
                                      "fine_tune": _training(2, 0.3, 0.25, 0.27)}),
            "ptq": _model("int8 via post-training quantization (power-of-two, per-tensor)", 0.28667,
                          [0.1, 0.5, 0.2, 0.3, 0.4], "LiteRT int8", "flowers_ptq_int8.tflite", 2_600_000, 1,
                          verify=_verify(True, exceptions=[mean_exception])),
            "qat": _model("int8 via quantization-aware training (power-of-two, per-tensor)", 0.90893,
                          [0.89, 0.93, 0.87, 0.95, 0.9], "LiteRT int8", "flowers_qat_int8.tflite", 2_610_000, 2,
                          validation_accuracy=0.91456, accuracy_interval=[0.88297, 0.92987],
                          training={"qat": _training(4, 0.6, 0.4, 0.31, 0.3, 0.33)},
                          verify=_verify(True, exceptions=[mean_exception]),
                          agreement={"top1_agreement": 0.99831, "images": 593, "max_steps": 2.0, "mean_steps": 0.1234,
                                     "histogram": {"0": 2500, "1": 400, "2": 65, ">2": 0}}),
            "tflite_ptq": _model("int8 via TFLite converter PTQ (per-channel, float scales)", 0.90219,
                                 [0.88, 0.94, 0.86, 0.96, 0.89], "LiteRT int8", "flowers_tflite_ptq.tflite", 2_700_000, 3,
                                 verify=_verify(False, failures=[f"tensor {i} has scale 0.0123 = 2^-6.35, not a power of two"
                                                                 for i in range(25)])),
            "tfmot_qat": _model("int8 via TFMOT default 8-bit QAT", 0.89882, [0.87, 0.92, 0.85, 0.96, 0.9],
                                "LiteRT int8", "flowers_tfmot_qat.tflite", 2_650_000, 4,
                                verify=_verify(False, failures=["CONV_2D Conv1: requantization not a power of two"])),
        },
        "versus_float": {
            "qat": {"difference": -0.02232, "interval": [-0.04511, 0.00118], "confidence": 0.95, "images": 593,
                    "only_reference": 30, "only_other": 17, "mcnemar_p": 0.07893},
            "ptq": {"difference": -0.64418, "interval": [-0.68391, -0.60141], "confidence": 0.95, "images": 593,
                    "only_reference": 384, "only_other": 2, "mcnemar_p": 1.2e-110},
        },
        "stage_seconds": {"data": 5.1, "float": 600.0, "ptq": 120.0, "qat": 500.0, "tflite_ptq": 90.0,
                          "tfmot_qat": 400.0, "evaluate": 60.0},
        "weight_ranges": {"layers": [
            {"name": "Conv1", "kind": "conv", "channel_max_abs": [0.5, 1.0, 2.0, 0.25]},
            {"name": "expanded_conv_depthwise", "kind": "depthwise", "channel_max_abs": [40.0, 0.01, 3.0, 0.0]},
            {"name": "block_1_depthwise", "kind": "depthwise", "channel_max_abs": [5.0, 0.5, 0.001]},
            {"name": "Logits", "kind": "dense", "channel_max_abs": [0.3, 0.4, 0.35, 0.2, 0.25]},
        ]},
    }
