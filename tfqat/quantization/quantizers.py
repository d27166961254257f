"""TFMOT quantizers whose scales are exact powers of two.

A quantizer only creates its variables (`build`) and fake-quantizes (`__call__`);
the math lives in `tfqat.quantization.pow2`.
"""

import weakref
from typing import Optional

from tfqat._keras import keras

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tfqat.preprocessing import check_name as check_preprocessing
from tfqat.quantization import pow2
from tfqat.quantization.kinds import KINDS, kind_named
from tfqat.quantization.modes import COLLECTING_RANGES, EXPORTING, is_in
from tfqat.targets import DEFAULT_TARGET, MODEL_INPUT_RULE, SAVED_WITHOUT_TARGET, target_named

_Quantizer = tfmot.quantization.keras.quantizers.Quantizer
_register = keras.utils.register_keras_serializable(package="tfqat")


class ConfigEquality:
    """Serialization and equality for classes whose constructor arguments are their config."""

    records_target = False  # its config names a target (`tfqat.targets`)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        if cls.records_target and "target" not in config:
            config = {**config, "target": SAVED_WITHOUT_TARGET}  # saved before configs recorded their target
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)


def per_channel_max(weights, kind):
    """Max |w| per output channel, in the order of the layer's outputs (`tfqat.quantization.kinds`)."""
    channels = kind_named(kind).output_channels(weights.shape)
    return tf.reduce_max(tf.abs(tf.reshape(weights, [-1, channels])), axis=0)


@_register
class Pow2WeightQuantizer(ConfigEquality, _Quantizer):
    """Symmetric int8 weights in [-127, 127] * 2**k, k from the current weights.

    The scale is derived from the weights on every call (no stale range after the
    last optimizer step), per tensor or per output channel.

    Args:
      per_channel: one scale per output channel instead of one per tensor.
      kind: the layer's kind in `tfqat.quantization.kinds` ('conv', 'depthwise' or 'dense'), which
        says how the kernel's axes make output channels.
    """

    def __init__(self, per_channel: bool = False, kind: str = "conv"):
        if kind not in KINDS:
            msg = f"Pow2WeightQuantizer kind={kind!r} is not one of {tuple(KINDS)}"
            raise ValueError(msg)
        self.per_channel = bool(per_channel)
        self.kind = kind

    def build(self, tensor_shape, name, layer):
        return {}

    def exponent(self, weights):
        """The exponent(s) k of the scale 2**k for these weights."""
        if self.per_channel:
            return pow2.weight_exponent(per_channel_max(weights, self.kind))
        return pow2.weight_exponent(tf.reduce_max(tf.abs(weights)))

    def kernel_exponent(self, kernel, variables):
        """The exponent(s) the kernel is quantized with, given this quantizer's variables (none here)."""
        return self.exponent(kernel)

    def __call__(self, inputs, training, weights, **kwargs):
        return self.fake_quant(inputs, tf.stop_gradient(self.exponent(inputs)))

    def fake_quant(self, inputs, exponent):
        """FakeQuant of the kernel at 2**exponent, laid out as the converter reads it (depthwise: in*dm channels)."""
        if not self.per_channel:
            return pow2.fake_quant_weights(inputs, exponent)
        if kind_named(self.kind).channel_axes > 1:  # depthwise: channels in * depth_multiplier on the last axis
            shape = tf.shape(inputs)
            flat = tf.reshape(inputs, [shape[0], shape[1], 1, -1])
            return tf.reshape(pow2.fake_quant_weights(flat, exponent, per_channel_axis=-1), shape)
        return pow2.fake_quant_weights(inputs, exponent, per_channel_axis=-1)

    def get_config(self):
        return {"per_channel": self.per_channel, "kind": self.kind}


class ScaleGroup:
    """Activation quantizers whose tensors share one power-of-two scale: the largest of their own.

    Every member's call needs the group's value. A traced graph computes it once (the first member's
    call) and the other members reuse that tensor, so a group of n tensors costs O(n) ops, not O(n^2):
    DenseNet121's largest block joins 49 tensors. Eager calls compute it each time.
    """

    def __init__(self, members):
        self.members = list(members)  # (quantizer, its variables)
        self._graphs = weakref.WeakKeyDictionary()  # graph -> {what: tensor}

    def largest(self, what: str, own):
        """max over members of own(quantizer, variables), once per graph for each `what`."""
        if tf.executing_eagerly():
            return self._compute(own)
        cache = self._graphs.setdefault(tf.compat.v1.get_default_graph(), {})
        if what not in cache:
            cache[what] = self._compute(own)
        return cache[what]

    def _compute(self, own):
        return tf.reduce_max(tf.stack([own(quantizer, variables) for quantizer, variables in self.members]))


def _global(value, reduce):
    """Reduce a per-replica scalar over all replicas, so a distributed step sees the whole batch's range."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return reduce(context.all_gather(tf.reshape(value, [1]), axis=0))


@_register
class Pow2ActivationQuantizer(ConfigEquality, _Quantizer):
    """int8 activations in [-128, 127] * 2**k with zero point 0.

    In inference, values round half away from zero, as LiteRT's int8 kernels
    round, so the Keras model and its TFLite export agree on ties; training
    steps use FakeQuant's cheaper rounding (ties up). Training tracks the range
    as a moving average of batch min/max (the first batch sets it); inference
    uses the frozen range. Inside
    `collecting_ranges()` an inference call widens the range to everything
    seen instead: that is calibration, i.e. post-training quantization.

    Args:
      ema_decay: weight of the old range in the moving average, in [0, 1).
      unsigned: the tensor is non-negative by construction (a ReLU's output): [0, 255] * 2**k,
        zero point -128 in the int8 model, twice the resolution of [-128, 127] * 2**k.
    """

    records_target = True

    def __init__(self, ema_decay: float = 0.99, unsigned: bool = False, target: str = DEFAULT_TARGET):
        if not 0.0 <= float(ema_decay) < 1.0:
            msg = f"Pow2ActivationQuantizer ema_decay={ema_decay!r} must be in [0, 1)"
            raise ValueError(msg)
        self.ema_decay = float(ema_decay)
        self.unsigned = bool(unsigned)
        self.target = target_named(target).name  # the runtime whose rounding inference reproduces
        # Set by tfqat.quantization.linking when this quantizes a conv/dense output: returns the
        # exponent of that layer's int32 accumulator, for the target's exact rounding.
        self.accumulator_exponent = None
        # ... and the kind of op whose accumulator that is (pow2.REQUANTIZING_OPS); "add" for an unlinked ADD's;
        # "average_pool" for an AveragePooling2D's; "input" for the model's input.
        self.kernel = "conv"
        # Set by linking for a MEAN over a count that is not a power of two (then the accumulator exponent
        # is the input's): pow2.mean_requantize.
        self.average_count = None
        # ... and a function giving that input's int8 zero point (XNNPACK's float32 MEAN rounds with it).
        self.mean_input_zero_point = None
        # Set by tfqat.quantization.linking when this tensor meets others in a concatenation: the
        # ScaleGroup of every tensor that must share one scale (this one's included).
        self.scale_group = None

    def rounding_rule(self):
        """The target's rule for the op that makes this tensor (`tfqat.targets`): the linked accumulator's op,
        ADD, or any other op's ("*")."""
        if self.kernel == "input":
            return MODEL_INPUT_RULE
        if self.accumulator_exponent is not None:
            op = pow2.REQUANTIZING_OPS[self.kernel]
        else:
            op = {"add": "ADD", "average_pool": "AVERAGE_POOL_2D"}.get(self.kernel, "*")
        return target_named(self.target).rule(op)

    def build(self, tensor_shape, name, layer):
        def weight(suffix, value):
            # Every replica computes the same value (see _global), so any replica's write will do.
            return layer.add_weight(
                f"{name}_{suffix}",
                initializer=keras.initializers.Constant(value),
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

        # Until data has been seen the range is ReLU6's, as in TFMOT.
        return {"min_var": weight("min", -6.0), "max_var": weight("max", 6.0), "seen": weight("seen", 0.0)}

    def _update(self, inputs, weights, training):
        batch_min = _global(tf.minimum(tf.reduce_min(inputs), 0.0), tf.reduce_min)
        batch_max = _global(tf.maximum(tf.reduce_max(inputs), 0.0), tf.reduce_max)
        first = weights["seen"] <= 0.0
        if training:
            decay = tf.where(first, 0.0, self.ema_decay)
            new_min = decay * weights["min_var"] + (1.0 - decay) * batch_min
            new_max = decay * weights["max_var"] + (1.0 - decay) * batch_max
        else:
            new_min = tf.where(first, batch_min, tf.minimum(weights["min_var"], batch_min))
            new_max = tf.where(first, batch_max, tf.maximum(weights["max_var"], batch_max))
        return tf.group(
            weights["min_var"].assign(new_min),
            weights["max_var"].assign(new_max),
            weights["seen"].assign(1.0),
        )

    def exponent(self, weights):
        """The scale exponent of this tensor: its own, or the largest of its scale group's (TFLite gives a
        concatenation's inputs and output one scale, the widest range's)."""
        if self.scale_group is not None:
            return self.scale_group.largest("exponent", lambda q, v: q.own_exponent(v))
        return self.own_exponent(weights)

    def own_exponent(self, weights):
        """The exponent of this tensor's own range."""
        return pow2.activation_exponent(weights["min_var"], weights["max_var"], self.grid_unsigned(weights))

    def grid_unsigned(self, weights):
        """Whether the tensor is on the unsigned grid [0, 255] * 2**k: fixed at construction here."""
        return self.unsigned

    def __call__(self, inputs, training, weights, **kwargs):
        if training or is_in(self, COLLECTING_RANGES):
            with tf.control_dependencies([self._update(inputs, weights, bool(training))]):
                exponent = self.exponent(weights)
        else:
            exponent = self.exponent(weights)
        # LiteRT's exact rounding costs a dozen element-wise ops per activation, which made QAT
        # steps 2.7x slower on MobileNetV2. Training needs the quantization noise, not the exact
        # ties (FakeQuant's rounding is at most one step away), so only inference, which must
        # match the int8 model, pays for it.
        litert_rounding = not training and not is_in(self, EXPORTING)
        accumulator = self.accumulator_exponent() if litert_rounding and self.accumulator_exponent else None
        mean_zero_point = self.mean_input_zero_point() if accumulator is not None and self.average_count else 0.0
        return pow2.fake_quant_activations(
            inputs, exponent, litert_rounding=litert_rounding, accumulator_exponent=accumulator,
            unsigned=self.grid_unsigned(weights), rule=self.rounding_rule(), average_count=self.average_count,
            mean_arithmetic=target_named(self.target).mean_arithmetic, mean_input_zero_point=mean_zero_point,
        )

    def get_config(self):
        # Unsigned only when set, so configs saved before it existed still compare equal; the target always
        # (a config without one was saved for SAVED_WITHOUT_TARGET: see ConfigEquality.from_config).
        return {"ema_decay": self.ema_decay, **({"unsigned": True} if self.unsigned else {}), "target": self.target}


@_register
class Pow2InputQuantizer(Pow2ActivationQuantizer):
    """The model input's quantizer: unsigned when the range it has seen holds no negative value.

    A model that rescales raw pixels itself (MobileNetV3, EfficientNet) takes [0, 255]: on the unsigned
    grid that is scale 1 with int8 zero point -128, so the int8 input is pixel - 128, what TFLite's own
    converter gives a uint8 image, and no bit is lost (the signed grid would need scale 2). An input
    with negative values ([-1, 1] images) stays signed like every activation. Before calibration the
    range is ReLU6's placeholder [-6, 6]: signed.
    """

    def __init__(self, ema_decay: float = 0.99, target: str = DEFAULT_TARGET, preprocessing: Optional[str] = None):
        super().__init__(ema_decay, unsigned=False, target=target)
        self.preprocessing = check_preprocessing(preprocessing)

    def grid_unsigned(self, weights):
        if not target_named(self.target).zero_points:
            return False  # a runtime without zero points (ESP-DL) takes [0, 255] inputs signed, at scale 2
        return weights["min_var"] >= 0.0

    def get_config(self):
        return with_preprocessing({"ema_decay": self.ema_decay, "target": self.target}, self.preprocessing)


def with_preprocessing(config: dict, preprocessing: Optional[str]) -> dict:
    """A model input quantizer's config with the preprocessing its float inputs had (`tfqat.preprocessing`),
    where one is known: the QAT model carries it through saving, loading and `tfqat.retarget`."""
    return config if preprocessing is None else {**config, "preprocessing": preprocessing}


@_register
class Pow2BiasQuantizer(ConfigEquality, _Quantizer):
    """Bias on the int32 grid input scale x weight scale, as the TFLite converter stores it.

    The grid is only known once the layer is linked to its input's quantizer
    (tfqat.quantization.linking); until then, and in graphs traced for export (the converter
    quantizes the bias itself), the bias passes unchanged.
    """

    def __init__(self):
        self.accumulator_exponent = None

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        if is_in(self, EXPORTING) or self.accumulator_exponent is None:
            return inputs
        scale = tf.stop_gradient(tf.pow(2.0, self.accumulator_exponent()))
        rounded = pow2.round_half_away_from_zero(inputs / scale) * scale
        return inputs + tf.stop_gradient(rounded - inputs)
