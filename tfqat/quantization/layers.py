"""Keras layers tfqat puts into a model so that every part of it has a power-of-two int8 form.

`ScalarOp`: arithmetic with a constant, as TFOpLambda layers record `x + 3.0` or `x * (1.0 / 6.0)`
(MobileNetV3 builds its hard-sigmoid so: relu6(x + 3) * (1 / 6)). TFMOT cannot give a TFOpLambda a
config, and the converter would quantize its constant by the constant's own range (3.0 at scale
3/255, zero point -128), not at a power of two. In a QAT model `ScalarOp` quantizes its constant as a
kernel is quantized: a power-of-two int8 constant, so TFLite's ADD and MUL with it are shifts. 3 is exactly 96 * 2**-5; 1/6
becomes 85 * 2**-9 (0.4 % low), and the QAT model computes with that value, as the int8 model does.

`Sigmoid`: the logistic sigmoid rounded as LiteRT's int8 LOGISTIC rounds its lookup table. LiteRT fills LOGISTIC's 256-entry table with 1 / (1 + exp(-x)) and rounds each value to the output
grid (1/256). TensorFlow's float32 sigmoid lands x = 2**-7 (an input step at scales up to 2**-7) on
128.5 steps exactly, which the output's FakeQuant rounds up to 129, where LiteRT gives 128; through
EfficientNet's 49 sigmoids such one-step differences grow to many steps of its output. So a QAT
model's inference outside export rounds the sigmoid to the output grid in float64 (`litert_logistic`);
training, float models and the graph traced for the converter use `tf.sigmoid`, which the converter
turns into LOGISTIC.
"""

from tfqat._keras import keras

import numpy as np
import tensorflow as tf
from tf_keras.src.utils import control_flow_util

from tfqat import fixedpoint
from tfqat.quantization import pow2
from tfqat.quantization.modes import EXPORTING, is_in
from tfqat.targets import SAVED_WITHOUT_TARGET, SIGNED_SIGMOID_EXPONENT, target_named

OUTPUT_STEPS = 256.0  # LOGISTIC's int8 output scale is 1/256 (zero point -128)
SIGNED_STEPS = 2.0**-SIGNED_SIGMOID_EXPONENT  # ESP-DL's sigmoid: scale 2**-7, zero point 0
_register = keras.utils.register_keras_serializable(package="tfqat")


@_register
class ScalarOp(keras.layers.Layer):
    """`x + c` (op='add') or `x * c` (op='multiply') with a constant number c.

    With `pow2_constant` (set in QAT models by the scheme's layout), c is the power-of-two int8 number
    the int8 model holds, a FakeQuant of the constant at `constant_exponent`, which the converter
    stores at that scale; a float model computes with c itself.
    """

    OPS = ("add", "multiply")

    def __init__(self, op: str, value: float, pow2_constant: bool = False, **kwargs):
        super().__init__(**kwargs)
        if op not in self.OPS:
            msg = f"ScalarOp op={op!r} is not one of {self.OPS}"
            raise ValueError(msg)
        self.op = op
        self.value = float(value)
        self.pow2_constant = bool(pow2_constant)

    def constant_exponent(self):
        """The exponent k of the constant's int8 scale 2**k: the weights' rule (|c| <= 127 * 2**k)."""
        return pow2.weight_exponent(abs(self.value))

    def call(self, inputs):
        constant = tf.constant(self.value, inputs.dtype)
        if self.pow2_constant:
            constant = pow2.fake_quant_weights(constant, self.constant_exponent())
        return inputs + constant if self.op == "add" else inputs * constant

    def get_config(self):
        return {**super().get_config(), "op": self.op, "value": self.value, "pow2_constant": self.pow2_constant}


@_register
class Sigmoid(keras.layers.Layer):
    """`Activation('sigmoid')`; with `litert_table` (set in QAT models by the scheme's layout), its
    inference outside export gives the int8 LOGISTIC of its `target` (`tfqat.targets`): LiteRT's table,
    TFLite Micro's fixed point (which needs the input's exponent: `input_exponent`, set by linking), or
    ESP-DL's table on the grid 2**-7."""

    def __init__(self, litert_table: bool = False, target: str = SAVED_WITHOUT_TARGET, **kwargs):
        super().__init__(**kwargs)
        self.litert_table = bool(litert_table)
        self.target = target_named(target).name
        self.input_exponent = None  # a function giving the exponent of the input's int8 scale

    def call(self, inputs, training=None):
        if not self.litert_table or is_in(self, EXPORTING):
            return tf.sigmoid(inputs)
        if training is None:
            training = keras.backend.learning_phase()
        # Training keeps tf.sigmoid, whose gradient stays finite where exp(-x) overflows.
        return control_flow_util.smart_cond(training, lambda: tf.sigmoid(inputs), lambda: self._int8_logistic(inputs))

    def _int8_logistic(self, inputs):
        if target_named(self.target).named == "espdl":
            return espdl_logistic(inputs)
        if target_named(self.target).named != "micro":
            return litert_logistic(inputs)
        if self.input_exponent is None and not tf.executing_eagerly():
            return litert_logistic(inputs)  # building the model's graph, before linking gives the input's scale
        if self.input_exponent is None:
            msg = f"Sigmoid '{self.name}' for TFLite Micro needs its input's scale; it is set when the QAT model is linked"
            raise ValueError(msg)
        return micro_logistic(inputs, self.input_exponent())

    def get_config(self):
        return {**super().get_config(), "litert_table": self.litert_table, "target": self.target}


def micro_logistic(values, input_exponent):
    """TFLite Micro's LOGISTIC on int8 inputs at 2**input_exponent, in output steps of 1/256: gemmlowp's
    fixed-point logistic of the Q4.27 input, computed by the integer executor's numpy arithmetic
    (`tfqat.fixedpoint`; inference only, no gradient)."""

    def steps(x, exponent):
        scale = float(2.0 ** float(exponent))
        integers = np.round(np.asarray(x, np.float64) / scale).astype(np.int64)
        return (fixedpoint.micro_logistic_steps(integers, scale) + 128).astype(np.float32)

    out = tf.numpy_function(steps, [values, tf.cast(input_exponent, tf.float32)], tf.float32, stateful=False)
    return tf.reshape(tf.cast(out, values.dtype), tf.shape(values)) / OUTPUT_STEPS


def litert_logistic(values):
    """sigmoid(x) rounded to LOGISTIC's int8 output grid (1/256) in float64, as LiteRT rounds its table.

    Rounded in float64: a float32 sigmoid puts x = 2**-7 exactly on 128.5 steps (then 129), where
    LiteRT's table and the exact value give 128.
    """
    return _rounded_sigmoid(values, OUTPUT_STEPS, OUTPUT_STEPS)


def espdl_logistic(values):
    """sigmoid(x) rounded to the grid 2**-7 and kept below 1 (0 to 127 steps), in float64: the table Espressif's
    esp-ppq writes for an ESP-DL Sigmoid, whose output has no zero point (`tfqat.integer.named.espdl_sigmoid`).
    128 * sigmoid(x) is never a tie for the inputs of an int8 grid but x = 0 (64 exactly), so the chips'
    roundings agree on it."""
    return _rounded_sigmoid(values, SIGNED_STEPS, SIGNED_STEPS - 1.0)


def _rounded_sigmoid(values, steps: float, top: float):
    """sigmoid(x) in float64, rounded half up to 1/steps, at most top steps."""
    x = tf.cast(values, tf.float64)
    rounded = tf.minimum(tf.floor(steps / (1.0 + tf.exp(-x)) + 0.5), top)
    return tf.cast(rounded / steps, values.dtype)
