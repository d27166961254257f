"""One view of a QAT model's quantized tensors: the only code that reads TFMOT's private attributes.

TFMOT keeps a layer's quantizers and their variables in private attributes of
its `QuantizeWrapper` (`_weight_vars`, `_quantize_activations`,
`_output_quantizers`). Linking, trained thresholds, calibration, bias
correction and AdaRound all need them; they filter this list instead of
reaching into TFMOT themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer, quantize_wrapper

from tfqat.quantization.kinds import kernel_kind

# The roles of a quantized tensor, in the order of a layer's computation.
INPUT = "input"  # the model's input (a QuantizeLayer)
KERNEL = "kernel"  # a conv/dense kernel
BIAS = "bias"  # its bias (on the accumulator's int32 grid)
BEFORE_ACTIVATION = "before_activation"  # a layer's output before its own softmax/tanh (TFLite runs those apart)
ACTIVATION = "activation"  # a layer's output after its own linear/ReLU activation
OUTPUT = "output"  # a layer's output, quantized by its config's output quantizer
ROLES = (INPUT, KERNEL, BIAS, BEFORE_ACTIVATION, ACTIVATION, OUTPUT)
# Roles whose quantizer sets the scale of the layer's int8 output.
OUTPUT_ROLES = (INPUT, ACTIVATION, OUTPUT)

Wrapper = quantize_wrapper.QuantizeWrapper
QuantizeLayer = quantize_layer.QuantizeLayer


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A quantizer of a QAT model and what it quantizes.

    Attributes:
      layer: the QuantizeLayer or QuantizeWrapper that owns the quantizer.
      role: one of ROLES.
      quantizer: the TFMOT quantizer.
      variables: the quantizer's variables, by name ("min_var", "max_var", "seen", "log2_threshold", ...).
      weight: the kernel or bias variable it quantizes; None for activations.
    """

    layer: Any
    role: str
    quantizer: Any
    variables: dict
    weight: Optional[Any] = None

    def __post_init__(self):
        if self.variables is None:  # TFMOT keeps None for quantizers without variables
            object.__setattr__(self, "variables", {})


def is_quantized(layer) -> bool:
    """A layer of a QAT model that holds quantizers (the input's QuantizeLayer or a QuantizeWrapper)."""
    return isinstance(layer, (QuantizeLayer, Wrapper))


def layer_tensors(layer) -> list:
    """The quantized tensors of one layer of a QAT model, in the order of its computation ([] for others)."""
    if isinstance(layer, QuantizeLayer):
        return [QuantizedTensor(layer, INPUT, layer.quantizer, layer.quantizer_vars)]
    if not isinstance(layer, Wrapper):
        return []
    found = []
    has_kernel = kernel_kind(layer.layer) is not None
    for position, (weight, quantizer, variables) in enumerate(layer._weight_vars):
        role = KERNEL if has_kernel and position == 0 else BIAS  # configs list the kernel first
        found.append(QuantizedTensor(layer, role, quantizer, variables, weight))
    for activation in getattr(layer, "_quantize_activations", None) or []:
        if hasattr(activation, "_pre_activation_vars"):
            found.append(QuantizedTensor(layer, BEFORE_ACTIVATION, activation.quantizer, activation._pre_activation_vars))
        if hasattr(activation, "_post_activation_vars"):
            found.append(QuantizedTensor(layer, ACTIVATION, activation.quantizer, activation._post_activation_vars))
    for quantizer in getattr(layer, "_output_quantizers", None) or []:
        found.append(QuantizedTensor(layer, OUTPUT, quantizer, layer._output_quantizer_vars))
    return found


def quantized_tensors(model) -> Iterator[QuantizedTensor]:
    """Every quantized tensor of a QAT model, layer by layer (a QAT model nested in another included)."""
    for layer in model.layers:
        if hasattr(layer, "layers") and not is_quantized(layer):
            yield from quantized_tensors(layer)
        else:
            yield from layer_tensors(layer)



def _recorded(model, attribute: str, plural: str, roles=ROLES) -> Optional[str]:
    """The one value of `attribute` that the quantizers of `roles` record, None where none does; a ValueError
    for a model whose quantizers record several."""
    values = {getattr(t.quantizer, attribute, None) for t in quantized_tensors(model) if t.role in roles} - {None}
    if len(values) > 1:
        msg = f"model '{model.name}' mixes quantizers for the {plural} {sorted(values)}; quantize it for one"
        raise ValueError(msg)
    return values.pop() if values else None


def model_target(model) -> Optional[str]:
    """The runtime a QAT model's quantizers round for (`tfqat.targets`); None for a model without tfqat's."""
    return _recorded(model, "target", "targets")


def model_preprocessing(model) -> Optional[str]:
    """The preprocessing a QAT model's inputs had (`tfqat.preprocessing`), as `tfqat.quantize_model`
    recorded it in its input quantizers; None where none was recorded."""
    return _recorded(model, "preprocessing", "preprocessings", (INPUT,))


def set_preprocessing(model, preprocessing: str) -> None:
    """Record the preprocessing of a QAT model's inputs in its input quantizers (saved with the model)."""
    for tensor in quantized_tensors(model):
        if tensor.role == INPUT and hasattr(tensor.quantizer, "preprocessing"):
            tensor.quantizer.preprocessing = preprocessing
