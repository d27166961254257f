"""Saving and loading TFMOT QAT models: the `.keras` format, which TFMOT 0.8.1 cannot load by itself, and one
layout of `save_weights` files for a model fresh from `quantize_model` and one already used.

tf_keras rebuilds a `.keras` model from its config and then builds each layer
once more from the saved build config, so TFMOT's `QuantizeLayer` made its
variables twice ("expected 7 variables, but received 4"); a `QuantizeWrapperV2`
rebuilt around an unbuilt layer listed its weights in another order than the
saved one; and the wrapped layer, whose kernel and bias the wrapper owns,
expected variables the file stores under the wrapper. These subclasses keep
the class names the files record (the `.keras` format keys variables by them),
build once, build the wrapped layer first as `quantize_apply` does, and let the
wrapped layer load nothing of its own. They change loading only: a model saved
by TFMOT loads with them, and a loaded model computes and trains as saved.

A `.weights.h5` file stores each layer's own variables. TFMOT's wrapper owns the
kernel and bias it quantizes, and its first call sets them on the wrapped layer
as tensors, which makes that layer stop listing them; a model fresh from
`quantize_apply` still listed some (the folded bias), so the weights of a used
model (calibrated, trained) did not load into a fresh one ("expected 1
variables, but received 0"). `untrack_wrapped_weights` gives the fresh model
the used one's layout.
"""

from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer, quantize_wrapper

from tfqat.quantization.layers import ScalarOp, Sigmoid
from tfqat.quantization.tensors import quantized_tensors


def untrack_wrapped_weights(qat) -> None:
    """The wrapped layers of a fresh QAT model stop listing the weights their wrappers own, as after a call."""
    for tensor in quantized_tensors(qat):
        if tensor.weight is None:
            continue
        for owned in (tensor.layer.layer._trainable_weights, tensor.layer.layer._non_trainable_weights):
            for position in reversed([i for i, w in enumerate(owned) if w is tensor.weight]):
                del owned[position]


class QuantizeLayer(quantize_layer.QuantizeLayer):
    def build(self, input_shape):
        if hasattr(self, "optimizer_step"):  # built already (the config rebuilt it; build_config asks again)
            return
        super().build(input_shape)


class QuantizeWrapperV2(quantize_wrapper.QuantizeWrapperV2):
    def build(self, input_shape):
        if hasattr(self, "optimizer_step"):
            return
        if not self.layer.built:  # as in quantize_apply, so the wrapper lists its weights in the saved order
            self.layer.build(input_shape)
        super().build(input_shape)
        load_wrapped = self.layer.load_own_variables

        def load_own_variables(store):
            if len(store.keys()) == 0:  # the wrapper saved (and loads) the wrapped layer's variables
                return
            load_wrapped(store)

        self.layer.load_own_variables = load_own_variables


LOADING_OBJECTS = {
    "QuantizeLayer": QuantizeLayer, "QuantizeWrapperV2": QuantizeWrapperV2,
    # tfqat's own layers are registered with Keras, but an `.h5` file records a wrapped layer by its bare class name.
    "ScalarOp": ScalarOp, "Sigmoid": Sigmoid,
}
"""Custom objects that replace TFMOT's classes of the same name while a model is loaded."""
