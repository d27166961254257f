"""The power-of-two quantize scheme: its registry (`tfqat.quantization.registry`) and layout transforms."""


from tfqat._keras import keras

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import utils as tfmot_utils
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer,
    transforms,
)

from tfqat.quantization import configs, registry
from tfqat.quantization.options import QUANTIZER_METHODS, QuantizeOptions
from tfqat.quantization.registry import Pow2QuantizeRegistry

LayerPattern = transforms.LayerPattern
LayerNode = transforms.LayerNode


class InputQuantize(transforms.Transform):
    """InputLayer => InputLayer -> QuantizeLayer(power-of-two): the int8 model input (unsigned for raw pixels
    with range-based scales)."""

    def __init__(self, options: QuantizeOptions):
        self.options = options

    def pattern(self):
        return LayerPattern("InputLayer")

    def replacement(self, match_layer):
        quant = quantize_layer.QuantizeLayer(self.options.input_quantizer())
        config = tfmot_utils.serialize_layer(quant, use_legacy_format=True)
        config["name"] = quant.name
        return LayerNode(config, input_layers=[match_layer])

    def custom_objects(self):
        classes = {cls for method in QUANTIZER_METHODS.values() for cls in (method.activation, method.input)}
        return {"QuantizeLayer": quantize_layer.QuantizeLayer, **{cls.__name__: cls for cls in classes}}


class FuseReLU(transforms.Transform):
    """Conv/Dense/Add/ScalarOp -> ReLU(6): no quantizer between them, as TFLite fuses the ReLU.

    The producers are the registry's rows that fuse a ReLU.
    """

    def __init__(self, options: QuantizeOptions):
        self.options = options

    def pattern(self):
        return LayerPattern("ReLU|Activation", inputs=[LayerPattern(registry.relu_producers())])

    def replacement(self, match_layer):
        relu = keras.layers.deserialize(match_layer.layer)
        producer = match_layer.input_layers[0]
        activation = producer.layer["config"].get("activation", "linear")
        if not registry.fusable_relu(relu) or activation not in ("linear", None):
            return match_layer
        row = registry.row_named(producer.layer["class_name"])
        if row is None:  # not a type the scheme quantizes: the registry refuses it by name
            return match_layer
        if row.role == registry.KERNEL:
            producer.metadata["quantize_config"] = configs.KernelQuantizeConfig(self.options, quantize_output=False)
        else:
            producer.metadata["quantize_config"] = configs.PassThroughQuantizeConfig()
        return match_layer

    def custom_objects(self):
        return {}


class QuantizedForm(transforms.Transform):
    """A tfqat layer => the same with its int8 behaviour switched on (a flag in its config, and any `fields`):
    a QAT model's Sigmoid computes its target's LOGISTIC, its ScalarOp computes with the power-of-two constant."""

    def __init__(self, class_name: str, flag: str, **fields):
        self.class_name = class_name
        self.flag = flag
        self.fields = fields

    def pattern(self):
        return LayerPattern(self.class_name)

    def replacement(self, match_layer):
        match_layer.layer["config"].update({self.flag: True, **self.fields})
        return match_layer

    def custom_objects(self):
        return {}


class Pow2LayoutTransform(tfmot.quantization.keras.QuantizeLayoutTransform):
    def __init__(self, options: QuantizeOptions):
        self.options = options

    def apply(self, model, layer_quantize_map):
        steps = [
            InputQuantize(self.options),
            FuseReLU(self.options),
            QuantizedForm("tfqat>Sigmoid", "litert_table", target=self.options.target),
            QuantizedForm("tfqat>ScalarOp", "pow2_constant"),
        ]
        return model_transformer.ModelTransformer(
            model, steps, set(layer_quantize_map.keys()), layer_quantize_map
        ).transform()


class Pow2QuantizeScheme(tfmot.quantization.keras.QuantizeScheme):
    """Power-of-two int8 scheme, for `tfmot.quantization.keras.quantize_apply`.

    Args:
      options: a `tfqat.quantization.options.QuantizeOptions`, or its fields as keywords:
        per_channel: per-output-channel weight scales (default: per tensor).
        thresholds: "ranges" (scales from weights and activation ranges) or "trained": every weight and
          activation scale comes from a trainable log2-threshold, trained with the model (TQT, Jain et al.
          2020); still a power of two, so the export stays shift-only. `trained_thresholds=True` says the same.
        unsigned_activations: ReLU outputs are quantized to [0, 255] * 2**k (int8 zero point -128) instead of
          [-128, 127] * 2**k: twice the resolution for tensors that are never negative.
        ema_decay: moving-average decay of activation ranges during training.
    """

    def __init__(self, options: QuantizeOptions = None, **fields):
        self.options = QuantizeOptions.from_fields(options, **fields)

    def get_layout_transformer(self):
        return Pow2LayoutTransform(self.options)

    def get_quantize_registry(self):
        return Pow2QuantizeRegistry(self.options)
