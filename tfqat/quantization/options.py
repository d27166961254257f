"""How a model is quantized, as one frozen object, and the quantizer methods it can name.

`QuantizeOptions` travels whole from `tfqat.quantize_model` through the scheme,
its registry and its layout transforms to the configs, which build quantizers
from it. A quantizer method (where scales come from) is one row of
`QUANTIZER_METHODS`: its weight, activation and model-input quantizer classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from tfqat.quantization.quantizers import Pow2ActivationQuantizer, Pow2InputQuantizer, Pow2WeightQuantizer
from tfqat.quantization.thresholds import TQTActivationQuantizer, TQTInputQuantizer, TQTWeightQuantizer
from tfqat.targets import DEFAULT_TARGET, target_named


@dataclass(frozen=True)
class QuantizerMethod:
    """The quantizer classes of one method: weights, activations, and the model's input."""

    weight: type
    activation: type
    input: type


QUANTIZER_METHODS = {
    # Scales from the weights and from activation ranges (moving averages in training, min/max in calibration).
    "ranges": QuantizerMethod(Pow2WeightQuantizer, Pow2ActivationQuantizer, Pow2InputQuantizer),
    # Scales from trainable log2-thresholds (TQT), started from the ranges' scales.
    "trained": QuantizerMethod(TQTWeightQuantizer, TQTActivationQuantizer, TQTInputQuantizer),
}


@dataclass(frozen=True)
class QuantizeOptions:
    """The options of the power-of-two scheme.

    Attributes:
      per_channel: one weight scale per output channel, where the layer's kind allows it (default: per tensor).
      thresholds: the quantizer method, a key of `QUANTIZER_METHODS`: "ranges" or "trained" (TQT).
      unsigned_activations: ReLU outputs on the unsigned grid [0, 255] * 2**k (int8 zero point -128).
      ema_decay: moving-average decay of activation ranges in training, in [0, 1).
      target: the runtime whose rounding the model's inference reproduces, a key of `tfqat.targets.TARGETS`.
    """

    per_channel: bool = False
    thresholds: str = "ranges"
    unsigned_activations: bool = False
    ema_decay: float = 0.99
    target: str = DEFAULT_TARGET

    def __post_init__(self):
        for name in ("per_channel", "unsigned_activations"):
            if not isinstance(getattr(self, name), bool):
                msg = f"QuantizeOptions {name}={getattr(self, name)!r} must be True or False"
                raise ValueError(msg)
        if not isinstance(self.thresholds, str) or self.thresholds not in QUANTIZER_METHODS:
            msg = f"QuantizeOptions thresholds={self.thresholds!r} is not one of {tuple(QUANTIZER_METHODS)}"
            raise ValueError(msg)
        if not isinstance(self.ema_decay, (int, float)) or isinstance(self.ema_decay, bool) or not 0.0 <= self.ema_decay < 1.0:
            msg = f"ema_decay={self.ema_decay!r} must be in [0, 1)"
            raise ValueError(msg)
        object.__setattr__(self, "ema_decay", float(self.ema_decay))
        if not isinstance(self.target, str):
            raise ValueError(f"QuantizeOptions target={self.target!r} must be a target's name")
        target = target_named(self.target)  # a ValueError naming the valid targets
        if self.per_channel and not target.per_channel_weights:
            raise ValueError(f"per_channel=True: target {self.target!r} takes one weight scale per tensor only")
        if self.unsigned_activations and not target.zero_points:
            msg = (f"unsigned_activations=True: target {self.target!r} has no zero points, so no unsigned grid "
                   "(int8 values are signed)")
            raise ValueError(msg)

    @classmethod
    def from_fields(cls, options: Optional["QuantizeOptions"] = None, trained_thresholds: Optional[bool] = None,
                    **fields) -> "QuantizeOptions":
        """`options` itself, or options from keyword fields (`trained_thresholds=True` names the "trained" method)."""
        if options is not None:
            if not isinstance(options, QuantizeOptions):
                msg = (
                    f"options={options!r} is not a QuantizeOptions; pass the options' fields by keyword "
                    "(per_channel=..., thresholds=..., unsigned_activations=..., ema_decay=..., target=...)"
                )
                raise ValueError(msg)
            if fields or trained_thresholds is not None:
                msg = f"pass either options or its fields, not both (got options and {sorted(fields)})"
                raise ValueError(msg)
            return options
        if trained_thresholds is not None:
            fields.setdefault("thresholds", "trained" if trained_thresholds else "ranges")
        return cls(**fields)

    @property
    def method(self) -> QuantizerMethod:
        return QUANTIZER_METHODS[self.thresholds]

    def weight_quantizer(self, kind):
        """The kernel quantizer of a layer of this `tfqat.quantization.kinds.KernelKind`."""
        return self.method.weight(per_channel=self.per_channel and kind.per_channel, kind=kind.name)

    def activation_quantizer(self, non_negative: bool = False):
        """The quantizer of an activation; unsigned when the option is on and the tensor is never negative."""
        unsigned = self.unsigned_activations and non_negative
        return self.method.activation(self.ema_decay, unsigned=unsigned, target=self.target)

    def input_quantizer(self):
        """The quantizer of the model's input."""
        return self.method.input(self.ema_decay, target=self.target)

    def as_dict(self) -> dict:
        """The fields, for a config (one saved without a target reads as `tfqat.targets.SAVED_WITHOUT_TARGET`)."""
        return asdict(self)
