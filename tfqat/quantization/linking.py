"""Linking each conv/dense layer of a QAT model to its input's quantizer.

TFLite requantizes a conv's int32 accumulator, at scale s_input * s_weight,
to the output scale with its own rounding, and stores the bias on that grid.
To reproduce this exactly, the Keras model must know s_input, which lives in
another layer's quantizer. `link_accumulators` finds it by walking the graph
and hands each conv's output and bias quantizers a function of the variables
that give s_input and s_weight. An int8 MUL rounds its int32 product, at scale
s_1 * s_2, the same way, so a Multiply (and a ScalarOp multiplying by its
constant) is linked to its two factors' scales too, and a MEAN its sum of
H*W inputs, at s_input / (H*W). The link is Python state:
`quantize_model` and `load_model` make it, and an unlinked model only rounds
less exactly.
"""

import math

from tfqat._keras import keras

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.quantizers import FixedQuantizer

from tfqat.quantization import tensors
from tfqat.quantization.configs import KernelQuantizeConfig, PassThroughQuantizeConfig
from tfqat.quantization.kinds import kernel_kind
from tfqat.quantization.layers import ScalarOp, Sigmoid
from tfqat.quantization.quantizers import Pow2ActivationQuantizer, ScaleGroup
from tfqat.targets import target_named

_Wrapper = tensors.Wrapper


def _producers(layer) -> list:
    """Every layer feeding `layer` (its one call), or [] when it is called more than once."""
    nodes = layer._inbound_nodes
    if len(nodes) != 1:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _producer(layer):
    """The single layer feeding `layer`, or None."""
    producers = _producers(layer)
    return producers[0] if len(producers) == 1 else None


def _own_quantizers(layer):
    """(quantizer, range variables) of the layer's own power-of-two quantizers of its int8 output."""
    return [
        (t.quantizer, t.variables)
        for t in tensors.layer_tensors(layer)
        if t.role in tensors.OUTPUT_ROLES and isinstance(t.quantizer, Pow2ActivationQuantizer)
    ]


def _scale_source(layer):
    """The layer whose quantizer sets `layer`'s output scale: itself, or the first before it that is not a
    pass-through (padding, reshape, dropout keep their input's scale); None when that is ambiguous."""
    while isinstance(layer, _Wrapper) and isinstance(layer.quantize_config, PassThroughQuantizeConfig):
        layer = _producer(layer)
    return layer


def _output_quantizer(layer):
    """(quantizer, its variables) of the tfqat quantizer of `layer`'s output, looking through pass-through layers."""
    own = _own_quantizers(_scale_source(layer))
    return own[0] if own else None


def _fixed_exponent(layer):
    """The exponent of a fixed output scale (a sigmoid's 2**-8, a tanh's 2**-7), or None."""
    for tensor in tensors.layer_tensors(layer):
        quantizer = tensor.quantizer
        if tensor.role == tensors.OUTPUT and isinstance(quantizer, FixedQuantizer):
            exponent = math.log2((quantizer.init_max - quantizer.init_min) / 255.0)
            return exponent if exponent == round(exponent) else None
    return None


def _scale_exponent(layer):
    """A function giving the scale exponent of `layer`'s int8 output, or None when it is not known."""
    found = _output_quantizer(layer)
    if found is not None:
        quantizer, variables = found
        return lambda: quantizer.exponent(variables)
    fixed = _fixed_exponent(_scale_source(layer))  # a sigmoid's, or a reshape of it
    return None if fixed is None else (lambda: tf.constant(fixed, tf.float32))


def _zero_point(layer):
    """A function giving the int8 zero point of `layer`'s output: -128 on an unsigned grid (or a sigmoid's
    fixed [0, 1)), else 0."""
    found = _output_quantizer(layer)
    if found is not None:
        quantizer, variables = found
        return lambda: -128.0 * tf.cast(quantizer.grid_unsigned(variables), tf.float32)
    fixed = _fixed_exponent(_scale_source(layer))
    return lambda: tf.constant(-128.0 if fixed == -8.0 else 0.0)


def _fused_output_quantizers(wrapper, consumers) -> list:
    """The quantizers of a layer's int8 output: its own, or those of the one ReLU TFLite fuses into its op."""
    outputs = [quantizer for quantizer, _ in _own_quantizers(wrapper)]
    users = consumers.get(id(wrapper), [])
    if not outputs and isinstance(wrapper.quantize_config, PassThroughQuantizeConfig) and len(users) == 1:
        outputs = [quantizer for quantizer, _ in _own_quantizers(users[0])]
    return outputs


def _mark_add(wrapper, consumers) -> None:
    """An Add's output quantizer (or its fused ReLU's) rounds as the target's ADD does; so does a ScalarOp
    adding a number (x + 3 in a hard-swish), which TFLite runs as ADD too; an AveragePooling2D's rounds as
    the target's AVERAGE_POOL_2D."""
    layer = wrapper.layer
    if isinstance(layer, keras.layers.Add) or (isinstance(layer, ScalarOp) and layer.op == "add"):
        for quantizer in _fused_output_quantizers(wrapper, consumers):
            quantizer.kernel = "add"
    if isinstance(layer, keras.layers.AveragePooling2D):
        for quantizer in _fused_output_quantizers(wrapper, consumers):
            quantizer.kernel = "average_pool"


def _link_product(wrapper, consumers) -> bool:
    """Hand a Multiply's (or a multiplying ScalarOp's) output quantizer, or that of the ReLU fused into
    it, the exponent of its int32 product."""
    if isinstance(wrapper.layer, keras.layers.Multiply):
        factors = [_scale_exponent(p) for p in _producers(wrapper)]
    elif isinstance(wrapper.layer, ScalarOp) and wrapper.layer.op == "multiply":
        factors = [_scale_exponent(_producer(wrapper)), wrapper.layer.constant_exponent]
    else:
        return False
    outputs = _fused_output_quantizers(wrapper, consumers)
    if len(factors) != 2 or any(f is None for f in factors) or not outputs:
        return False
    first, second = factors
    for quantizer in outputs:
        quantizer.accumulator_exponent = lambda: first() + second()
        quantizer.kernel = "mul"
    return True


def _keeps_dims(wrapper, consumers) -> bool:
    """Whether the exported MEAN keeps its dimensions: keepdims=True, or a pooling whose only user reshapes it
    back to an image (EfficientNet's squeeze-and-excitation), which the converter folds into the MEAN."""
    if wrapper.layer.keepdims:
        return True
    users = consumers.get(id(wrapper), [])
    reshape = users[0].layer if len(users) == 1 and isinstance(users[0], _Wrapper) else None
    return isinstance(reshape, keras.layers.Reshape) and len(reshape.target_shape) == 3


def _link_sigmoid(wrapper) -> None:
    """Hand a Sigmoid its input's exponent: TFLite Micro's fixed-point LOGISTIC depends on the input's scale."""
    if isinstance(wrapper.layer, Sigmoid):
        wrapper.layer.input_exponent = _scale_exponent(_producer(wrapper))


def _link_mean(wrapper, consumers) -> bool:
    """Hand a global average pool's output quantizer the exponent of LiteRT's MEAN accumulator.

    MEAN sums its H*W inputs in int32 and requantizes the sum, at scale s_input / (H*W), as a conv
    does its accumulator (by the target's MEAN rule); only a power-of-two H*W keeps that a shift. Any
    other count is scaled otherwise (`pow2.mean_requantize`): the quantizer is given the count, the input's
    exponent and the input's zero point (which XNNPACK's float32 MEAN rounds with).
    """
    if not isinstance(wrapper.layer, keras.layers.GlobalAveragePooling2D):
        return False
    shape = wrapper.input_shape  # the wrapper is what the model calls (a loaded model never calls the inner layer)
    count = shape[1] * shape[2] if None not in shape[1:3] else 0
    source = _scale_exponent(_producer(wrapper))
    outputs = [quantizer for quantizer, _ in _own_quantizers(wrapper)]
    if count < 1 or source is None or not outputs:
        return False
    power_of_two = not count & (count - 1)
    for quantizer in outputs:
        quantizer.accumulator_exponent = (lambda: source() - math.log2(count)) if power_of_two else source
        quantizer.average_count = None if power_of_two else count
        quantizer.mean_input_zero_point = _zero_point(_producer(wrapper))
        # LiteRT's optimized MEAN (its own rounding) runs only for one that keeps its dimensions.
        quantizer.kernel = "mean_keep_dims" if _keeps_dims(wrapper, consumers) else "mean"
    return True


def _output_quantizers(wrapper, consumers):
    """The power-of-two quantizer that rounds this kernel layer's accumulator: the one before its own sigmoid,
    tanh or softmax (which TFLite runs as a separate op on the conv's int8 output), its own, or a fused ReLU's."""
    before = [
        t.quantizer for t in tensors.layer_tensors(wrapper)
        if t.role == tensors.BEFORE_ACTIVATION and isinstance(t.quantizer, Pow2ActivationQuantizer)
    ]
    if before:
        return before
    own = [quantizer for quantizer, _ in _own_quantizers(wrapper)]
    if own:
        return own
    users = consumers.get(id(wrapper), [])
    if wrapper.quantize_config.quantize_output is False and len(users) == 1:
        return [quantizer for quantizer, _ in _own_quantizers(users[0])]
    return []


def _accumulator_exponent(input_quantizer, kernel, weight_quantizer, weight_variables):
    quantizer, variables = input_quantizer

    def exponent():
        return quantizer.exponent(variables) + weight_quantizer.kernel_exponent(kernel, weight_variables)

    return exponent


def _consumers(qat_model) -> dict:
    """id(layer) -> the layers it alone feeds."""
    consumers = {}
    for layer in qat_model.layers:
        producer = _producer(layer)
        if producer is not None:
            consumers.setdefault(id(producer), []).append(layer)
    return consumers


def _joined_output(layer, consumers):
    """(quantizer, variables) of the output whose scale a layer's inputs must share, or None: every
    Concatenate's (TFLite's CONCATENATION copies bytes), and an Add's (or its fused ReLU's) when its target adds
    raw int8 values (`tfqat.targets.Target.aligned_adds`: ESP-DL)."""
    if isinstance(layer.layer, keras.layers.Concatenate):
        return _output_quantizer(layer)
    if not isinstance(layer.layer, keras.layers.Add):
        return None
    own = _own_quantizers(layer)
    users = consumers.get(id(layer), [])
    if not own and isinstance(layer.quantize_config, PassThroughQuantizeConfig) and len(users) == 1:
        own = _own_quantizers(users[0])
    return own[0] if own and target_named(own[0][0].target).aligned_adds else None


def share_scales(qat_model) -> int:
    """Give the inputs and the output of every Concatenate (and, for a target that adds raw int8 values, of
    every Add) one power-of-two scale, the widest of theirs.

    TFLite's int8 CONCATENATION copies bytes, so the converter gives each input tensor the output's scale
    (a conv feeding it then requantizes its accumulator straight to that scale); ESP-DL's Add sums int8
    values as they are. Sharing the scale in Keras trains and rounds the model the way the runtime runs it.
    Chained concatenations (DenseNet's blocks) and a residual stage's additions join one group. Returns the
    number of groups.
    """
    groups = {}  # id(quantizer) -> the shared list of (quantizer, variables)
    consumers = _consumers(qat_model)
    for layer in qat_model.layers:
        output = _joined_output(layer, consumers) if isinstance(layer, _Wrapper) else None
        if output is None:
            continue
        members = [output] + [_output_quantizer(p) for p in _producers(layer)]
        if any(m is None for m in members) or len({m[0].unsigned for m in members}) != 1:
            continue  # an input without a tfqat scale, or signed beside unsigned: left to the converter
        group = []
        for quantizer, variables in members:
            for member in groups.get(id(quantizer), [(quantizer, variables)]):
                if not any(member[0] is q for q, _ in group):
                    group.append(member)
        for quantizer, _ in group:
            groups[id(quantizer)] = group
    distinct = {id(g): g for g in groups.values()}.values()
    for members in distinct:
        group = ScaleGroup(members)
        for quantizer, _ in members:
            quantizer.scale_group = group
    return len(distinct)


def link_accumulators(qat_model) -> int:
    """Link every conv/dense of a tfqat QAT model to its input's scale; returns how many were linked.

    Shared scales (concatenations', and additions' where the target needs it: `share_scales`) are linked
    first, so a conv reads the scale its input really has.
    """
    share_scales(qat_model)
    for tensor in tensors.quantized_tensors(qat_model):
        if tensor.role == tensors.INPUT and isinstance(tensor.quantizer, Pow2ActivationQuantizer):
            tensor.quantizer.kernel = "input"  # quantized outside the runtime (MODEL_INPUT_RULE)
    consumers = _consumers(qat_model)
    linked = 0
    for layer in qat_model.layers:
        if isinstance(layer, _Wrapper):
            _mark_add(layer, consumers)
            _link_sigmoid(layer)
        if isinstance(layer, _Wrapper) and (_link_product(layer, consumers) or _link_mean(layer, consumers)):
            linked += 1
            continue
        if not isinstance(layer, _Wrapper) or not isinstance(layer.quantize_config, KernelQuantizeConfig):
            continue
        input_quantizer = _output_quantizer(_producer(layer))
        weights = {t.role: t for t in tensors.layer_tensors(layer) if t.role in (tensors.KERNEL, tensors.BIAS)}
        kernel = weights.get(tensors.KERNEL)
        if input_quantizer is None or kernel is None or not hasattr(kernel.quantizer, "kernel_exponent"):
            continue
        exponent = _accumulator_exponent(input_quantizer, kernel.weight, kernel.quantizer, kernel.variables)
        if tensors.BIAS in weights:
            weights[tensors.BIAS].quantizer.accumulator_exponent = exponent
        for quantizer in _output_quantizers(layer, consumers):
            quantizer.accumulator_exponent = exponent
            quantizer.kernel = kernel_kind(layer.layer).requantize
        linked += 1
    return linked
