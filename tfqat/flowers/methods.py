"""The quantization methods of the flowers workflow, as one registry that the pipeline, report, plots and study read.

A method turns the run's float model (and its calibration and training data)
into an int8 TFLite model. Adding a method is one entry in `METHODS`: its
stage name, titles, file name and builder; the CLI (`tfqat run --methods`,
`tfqat study --methods`), the report and the study pick it up from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

# Builders take the pipeline's Run (tfqat.flowers.pipeline.Run), which imports this registry, and the Method.


@dataclass(frozen=True)
class QuantizedModel:
    """What a method builds: the int8 .tflite bytes and, for tfqat's and TFMOT's models, the Keras model."""

    tflite: bytes
    keras_model: object = None


@dataclass(frozen=True)
class Recipe:
    """How one of tfqat's power-of-two methods quantizes: its start and its quantizers, and for QAT its training.

    `epochs` and `learning_rate` of None take the run's `qat_epochs` and `qat_learning_rate`.
    The run's --per-channel, --unsigned-activations, --trained-thresholds, --equalize and --distillation flags
    switch the matching field on for every method (--trained-thresholds and --equalize only for QAT methods).
    """

    equalize: bool = False  # start from the cross-layer-equalized float model (tfqat.equalize with calibration images)
    per_channel: bool = False  # one weight scale per output channel (still a power of two)
    trained_thresholds: bool = False  # TQT: trainable log2 thresholds for weights and activations
    unsigned_activations: bool = False  # ReLU outputs on [0, 255] * 2**k (int8 zero point -128)
    bias_correction: bool = False  # after calibration, biases absorb the mean shift of weight rounding
    adaround: bool = False  # after calibration, kernels rounded layer by layer to fit the float outputs (AdaRound);
    # with train=True QAT starts from that rounded model
    train: bool = False  # QAT (model.fit) after calibration; False: PTQ (calibration only)
    distillation: bool = False  # QAT learns the float model's class probabilities instead of the labels
    epochs: Optional[int] = None
    learning_rate: Optional[float] = None
    frozen_threshold_epochs: Optional[int] = None  # TQT: the last N epochs train with the thresholds held fixed

    def __post_init__(self):
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"Recipe.epochs={self.epochs!r} must be 0 or more")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"Recipe.learning_rate={self.learning_rate!r} must be positive")
        if not self.train and (self.distillation or self.epochs is not None or self.learning_rate is not None):
            raise ValueError("Recipe: distillation, epochs and learning_rate need train=True")
        if self.frozen_threshold_epochs is not None:
            if not (self.train and self.trained_thresholds):
                raise ValueError("Recipe.frozen_threshold_epochs needs train=True and trained_thresholds=True")
            if self.frozen_threshold_epochs < 1:
                raise ValueError(f"Recipe.frozen_threshold_epochs={self.frozen_threshold_epochs!r} must be 1 or more")

    def calibration(self) -> "Recipe":
        """The fields that make the calibrated start (training's own fields reset): equal ones share it."""
        return replace(
            self, train=False, distillation=False, epochs=None, learning_rate=None, frozen_threshold_epochs=None
        )

    def with_run_flags(
        self, *, per_channel: bool, equalize: bool, distillation: bool, trained_thresholds: bool = False,
        unsigned_activations: bool = False,
    ) -> "Recipe":
        """This recipe under a run's flags: a flag that is on switches its field on."""
        return replace(
            self,
            per_channel=self.per_channel or per_channel,
            unsigned_activations=self.unsigned_activations or unsigned_activations,
            trained_thresholds=self.trained_thresholds or (trained_thresholds and self.train),
            equalize=self.equalize or (equalize and self.train),  # --equalize was QAT's flag; PTQ has its own method
            distillation=self.distillation or (distillation and self.train),
        )


@dataclass(frozen=True)
class Method:
    """One way to make the int8 model, and how the report, plots and published files name it."""

    name: str  # stage name: results["models"][name], <out>/history/<name>.csv, --methods
    title: str  # the report's and results' name of the network
    label: str  # short name in plots
    file: str  # the .tflite file in the run folder (and in export/ when published)
    build: Callable[..., QuantizedModel]  # (run, method) -> the int8 model
    recipe: Optional[Recipe] = None  # tfqat's power-of-two methods; None for the peers
    default: bool = True  # run by `tfqat run` without --methods
    published: bool = False  # copied to --export-dir
    peer: bool = False  # another tool's method, for comparison
    control: bool = False  # a float model, not quantized: the reference QAT is judged against (CONTROL)
    reference: Optional[float] = None  # the reference table's accuracy for this network


def _pow2(run, method: Method) -> QuantizedModel:
    from tfqat.tflite import export

    recipe = run.recipe(method)
    model = run.pow2_model(recipe)
    if recipe.train:
        run.fit(model, method.name, recipe)
    return QuantizedModel(export.with_model_metadata(export.convert_int8(model), model), model)


def _float_continued(run, method: Method) -> QuantizedModel:
    """The float model trained on for QAT's epochs with QAT's schedule, learning rate, augmentation and epoch
    selection (`Run.fit`), without quantization: what QAT gains from training longer, it gains here too."""
    from tfqat.tflite import export

    model = run.float_copy()
    run.fit(model, method.name, Recipe(train=True, distillation=run.options.qat_distillation))
    return QuantizedModel(export.convert_float(model), model)


def _tflite_ptq(run, method: Method) -> QuantizedModel:
    from tfqat.flowers import baselines

    return QuantizedModel(baselines.convert_tflite_ptq(run.float_model(), run.calibration_images))


def _tfmot_qat(run, method: Method) -> QuantizedModel:
    from tfqat.flowers import baselines
    from tfqat.tflite import export

    model = baselines.tfmot_default_qat(run.float_model())
    run.fit(model, method.name, Recipe(train=True, distillation=run.options.qat_distillation))
    return QuantizedModel(export.convert_int8(model), model)


FLOAT = "float"
FLOAT_TITLE = "original float network"
FLOAT_FILE = "flowers_mobilenet_v2_float.tflite"
FLOAT_WEIGHTS = "float.weights.h5"  # the float model's Keras weights in a run folder, which every method starts from
FLOAT_REFERENCE = 0.8965

_FILE = "flowers_mobilenet_v2_int8_{}.tflite"

CONTROL = "float_continued"

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            CONTROL, "float network trained on for QAT's epochs (the control: QAT's training without quantization)",
            "float, trained as long as QAT", "flowers_mobilenet_v2_float_continued.tflite", _float_continued,
            control=True,
        ),
        Method(
            "ptq", "int8 via post-training quantization (power-of-two, per-tensor)", "PTQ int8",
            _FILE.format("ptq"), _pow2, Recipe(), published=True, reference=0.2943,
        ),
        Method(
            "ptq_equalized",
            "int8 via post-training quantization after cross-layer equalization (power-of-two, per-tensor)",
            "PTQ int8, equalized", _FILE.format("ptq_equalized"), _pow2, Recipe(equalize=True), published=True,
        ),
        Method(
            "ptq_equalized_unsigned",
            "int8 via PTQ after cross-layer equalization, unsigned ReLU outputs (power-of-two, per-tensor)",
            "PTQ int8, equalized, unsigned", _FILE.format("ptq_equalized_unsigned"), _pow2,
            Recipe(equalize=True, unsigned_activations=True), default=False,
        ),
        Method(
            "ptq_equalized_bc",
            "int8 via PTQ after cross-layer equalization and bias correction (power-of-two, per-tensor)",
            "PTQ int8, equalized, bias-corrected", _FILE.format("ptq_equalized_bc"), _pow2,
            Recipe(equalize=True, bias_correction=True), default=False,
        ),
        Method(
            "ptq_tuned",
            "int8 via PTQ after cross-layer equalization, AdaRound and bias correction (power-of-two, per-tensor)",
            "PTQ int8, equalized, AdaRound", _FILE.format("ptq_tuned"), _pow2,
            Recipe(equalize=True, bias_correction=True, adaround=True), published=True,
        ),
        Method(
            "qat", "int8 via quantization-aware training (power-of-two, per-tensor)", "QAT int8",
            _FILE.format("qat"), _pow2, Recipe(train=True), default=False,
        ),
        Method(
            "qat_equalized",
            "int8 via QAT from the cross-layer-equalized model (power-of-two, per-tensor)", "QAT int8, equalized",
            _FILE.format("qat_equalized"), _pow2, Recipe(train=True, equalize=True), default=False,
        ),
        Method(
            "qat_tqt", "int8 via QAT with trained thresholds (TQT; power-of-two, per-tensor)", "QAT int8, TQT",
            _FILE.format("qat_tqt"), _pow2, Recipe(train=True, trained_thresholds=True), default=False,
        ),
        Method(
            "qat_tqt_equalized",
            "int8 via QAT with trained thresholds from the cross-layer-equalized model (TQT; power-of-two, per-tensor)",
            "QAT int8, TQT, equalized", _FILE.format("qat_tqt_equalized"), _pow2,
            Recipe(train=True, trained_thresholds=True, equalize=True), default=False,
        ),
        Method(
            "qat_tqt_tuned",
            "int8 via QAT with trained thresholds from the AdaRound PTQ model (TQT; power-of-two, per-tensor)",
            "QAT int8, TQT, from AdaRound", _FILE.format("qat_tqt_tuned"), _pow2,
            Recipe(train=True, trained_thresholds=True, equalize=True, bias_correction=True, adaround=True),
            default=False,
        ),
        Method(
            "qat_tqt_tuned_slow",
            "int8 via QAT with trained thresholds from the AdaRound PTQ model at a tenth of the learning rate "
            "(TQT; power-of-two, per-tensor)",
            "QAT int8, TQT, from AdaRound, LR / 10", _FILE.format("qat_tqt_tuned_slow"), _pow2,
            Recipe(
                train=True, trained_thresholds=True, equalize=True, bias_correction=True, adaround=True,
                learning_rate=1e-5,
            ),
            published=True, reference=0.8910,
        ),
        Method(
            "qat_tqt_frozen",
            "int8 via QAT with trained thresholds, held fixed for the last 3 epochs (TQT; power-of-two, per-tensor)",
            "QAT int8, TQT, thresholds frozen late", _FILE.format("qat_tqt_frozen"), _pow2,
            Recipe(train=True, trained_thresholds=True, frozen_threshold_epochs=3), default=False,
        ),
        Method(
            "qat_tqt_unsigned",
            "int8 via QAT with trained thresholds, unsigned ReLU outputs (TQT; power-of-two, per-tensor)",
            "QAT int8, TQT, unsigned", _FILE.format("qat_tqt_unsigned"), _pow2,
            Recipe(train=True, trained_thresholds=True, unsigned_activations=True), default=False,
        ),
        Method(
            "qat_per_channel", "int8 via quantization-aware training (power-of-two, per-channel)",
            "QAT int8, per-channel", _FILE.format("qat_per_channel"), _pow2, Recipe(train=True, per_channel=True),
            default=False,
        ),
        Method(
            "qat_tqt_per_channel", "int8 via QAT with trained thresholds (TQT; power-of-two, per-channel)",
            "QAT int8, TQT, per-channel", _FILE.format("qat_tqt_per_channel"), _pow2,
            Recipe(train=True, trained_thresholds=True, per_channel=True), default=False, published=True,
        ),
        Method(
            "tflite_ptq", "int8 via TFLite converter PTQ (per-channel, float scales)", "TFLite PTQ int8 (peer)",
            _FILE.format("tflite_ptq"), _tflite_ptq, peer=True,
        ),
        Method(
            "tfmot_qat", "int8 via TFMOT default 8-bit QAT", "TFMOT QAT int8 (peer)",
            _FILE.format("tfmot_qat"), _tfmot_qat, peer=True,
        ),
    )
}
"""Every method, in the order the pipeline runs them and the report lists them."""

DEFAULT_METHODS = tuple(name for name, method in METHODS.items() if method.default)
DEFAULT_QAT = next(name for name in DEFAULT_METHODS if METHODS[name].recipe and METHODS[name].recipe.train)
"""tfqat's QAT method of `tfqat run` and `tfqat qat`, chosen over seeds on validation (docs/experiments.md)."""
PUBLISHED_QAT = tuple(name for name, m in METHODS.items() if m.published and m.recipe and m.recipe.train)
"""The published QAT models: the default and the per-channel one (the runtime and chip benchmarks run these)."""
STAGES = (FLOAT, *METHODS)
"""Every stage a run can have: the float model first, then the methods."""


def method(name: str) -> Method:
    """The registered method called `name`; a ValueError lists the valid names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def parse_methods(text: str) -> tuple[str, ...]:
    """A comma-separated list of method names (as --methods takes it), checked and without repeats."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError(f"no method named in {text!r}; choose from {', '.join(METHODS)}")
    for name in names:
        method(name)
    return names
