"""A float model rewritten into the layers the power-of-two scheme quantizes, computing the same function.

One pass over the graph (nested models inlined):
- Conv/DepthwiseConv + BatchNormalization pairs fold into one conv (`folding`);
- Rescaling, Normalization and BNs with no conv to fold into become 1x1 depthwise convs (`affine`);
- sigmoid becomes tfqat's `Sigmoid` layer (in the QAT model its inference rounds as LiteRT's
  LOGISTIC table), and swish (SiLU) x * Sigmoid(x), as TFLite computes it (LOGISTIC then MUL); a conv
  or dense layer with either activation becomes the linear layer (`<name>_linear`) followed by them,
  the last of which keeps the layer's name;
- TFOpLambda arithmetic with a number becomes a ScalarOp (`scalar_ops`).
`tfqat.quantize_model` quantizes this model; AdaRound, equalization and the debugger compare
against it layer by layer, so every one of them uses this function.
"""

from tfqat._keras import keras
from tfqat.graph import affine, folding, functional, scalar_ops
from tfqat.quantization.configs import activation_name
from tfqat.quantization.kinds import kernel_kind
from tfqat.quantization.layers import Sigmoid

SWISH_NAMES = ("swish", "silu")
_SPLIT = SWISH_NAMES + ("sigmoid",)


def _activation_hook(layer, args, kwargs):
    """Sigmoid as tfqat's `Sigmoid` layer, swish as x * Sigmoid(x), on an Activation or a conv/dense layer."""
    name = activation_name(getattr(layer, "activation", None))
    if name not in _SPLIT or not (isinstance(layer, keras.layers.Activation) or kernel_kind(layer)):
        return None
    # The layer giving the original output keeps the original name (outputs keep their names).
    sigmoid_name = layer.name if name == "sigmoid" else f"{layer.name}_sigmoid"
    with functional.autograph_off():
        if isinstance(layer, keras.layers.Activation):
            x = args[0]
        else:
            config = {**layer.get_config(), "activation": "linear", "name": f"{layer.name}_linear"}
            linear = type(layer).from_config(config)
            x = linear(*args, **kwargs)
            linear.set_weights(layer.get_weights())
        gate = Sigmoid(name=sigmoid_name)(x)
        return gate if name == "sigmoid" else keras.layers.Multiply(name=layer.name)([x, gate])


def canonical_model(model, fold_bn: bool = True):
    """A flat copy of `model` in the layers `tfqat.quantize_model` quantizes (see the module's docstring).

    With `fold_bn=False`, BatchNormalization layers stay as they are (and the scheme refuses them).
    The original model is left untouched.
    """
    flat = functional.flat_graph(model)
    hooks = [_activation_hook, scalar_ops.tf_op_hook]
    kinds = affine.AFFINE_LAYERS
    fold_into = {}
    if fold_bn:
        fold_into = folding.conv_folds(flat)
        hooks.insert(0, folding.conv_fold_hook(fold_into))
    else:
        kinds = tuple(k for k in kinds if k is not keras.layers.BatchNormalization)
    hooks.insert(1, affine.depthwise_hook(flat, kinds, skip=set(fold_into)))
    return functional.rebuild(flat, functional.first_of(*hooks))
