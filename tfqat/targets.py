"""The runtimes a model can be trained for: how each rounds each op's requantization, one row per target.

With power-of-two scales every requantization divides an integer accumulator by
2**n; runtimes differ only in how they round (one rounding or two, and which way
a tie goes). A target names the rule of each op, so the Keras QAT model
(`tfqat.quantization`) and the integer executor (`tfqat.integer`) round as that
runtime does. The rows for LiteRT and TFLite Micro are measured
(`benchmarks/executor.py --rules`, ai-edge-litert 2.3.0 and tflite-micro
0.dev20261023182759 on x86-64; evidence in benchmarks/results/executor.md); the
half-up and half-to-even rows are single roundings (CMSIS-NN rounds half up),
and the ESP-DL rows are read from Espressif's sources and checked against
its esp-ppq (tests/test_espdl_ppq.py). A chip's row also says what its int8 format allows
beyond rounding: ESP-DL (ESP32-S3, ESP32-P4) adds raw int8 values, so an Add's
inputs share its output's scale; ESP32-S3 has per-tensor weights only and keeps
20 bits of each bias. Pure Python: read without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

Rule = Literal["half_away_from_zero", "half_up", "half_even", "tflite_double", "double_half_up"]

RULES: dict[str, str] = {
    "half_away_from_zero": "one rounding, ties away from zero (std::round; ARM's rounding shift on magnitudes)",
    "half_up": "one rounding, ties toward +infinity ((x + 2^(n-1)) >> n: CMSIS-NN, ESP32-S3)",
    "half_even": "one rounding, ties to the even neighbour (IEEE round-to-nearest-even: ESP32-P4, float32 kernels)",
    "tflite_double": "TFLite's MultiplyByQuantizedMultiplier with the Q31 multiplier 0.5: halve rounding ties up, "
    "then divide by 2^(n-1) rounding ties away from zero",
    "double_half_up": "halve rounding ties up, then divide by 2^(n-1) rounding ties up again",
}
# LiteRT's optimized MEAN (a 4-D MEAN over height and width that keeps its dimensions) rounds otherwise than
# every other MEAN: a rule key of its own.
MEAN_KEEP_DIMS = "MEAN keep_dims"
# How each flavour of kernels (a target's `named`) computes a MEAN over a count that is not a power of two:
# "q31", the sum less the zero point times a Q31 multiplier (LiteRT's kernels, TFLite Micro), or "float32",
# the raw sum times a float32 scale plus a float32 offset, rounded half to even (XNNPACK; measured:
# tests/test_targets.py), or "espdl_float32", ESP-DL's global average pool: the raw int32 sum times the
# float32 scale (s_in / s_out) / count, rounded by the chip's rule (tfqat.quantization.pow2.mean_requantize).
# Every other op that is not a shift is computed alike by "litert" and "xnnpack".
MEAN_ARITHMETIC = {"litert": "q31", "micro": "q31", "xnnpack": "float32", "espdl": "espdl_float32"}
NAMED_FLAVOURS = tuple(MEAN_ARITHMETIC)
# The model's int8 input is quantized before any runtime sees it, by the image contract: rounded half away
# from zero, as LiteRT's QUANTIZE and tfqat.tflite.litert.quantize do, whatever the target.
MODEL_INPUT_RULE = "half_away_from_zero"
# A double rounding's second step, which is also how such a runtime rounds a value that is no accumulator.
SECOND_STEP = {"tflite_double": "half_away_from_zero", "double_half_up": "half_up"}


@dataclass(frozen=True)
class LaneSplit:
    """A kernel whose vector loop takes `lanes` channels at a time and rounds them by `rule`, and rounds
    the channels left over (the last C mod lanes) by `leftover` (LiteRT's built-in DEPTHWISE_CONV_2D)."""

    rule: str
    lanes: int
    leftover: str


RoundingRule = Union[str, LaneSplit]


def check_rule(rule) -> RoundingRule:
    """Returns the rule (a name or a LaneSplit), or raises ValueError naming the valid choices."""
    if isinstance(rule, LaneSplit):
        check_rule(rule.rule)
        check_rule(rule.leftover)
        if rule.lanes < 1:
            raise ValueError(f"LaneSplit lanes={rule.lanes} is not valid; use an integer >= 1")
        return rule
    if rule not in RULES:
        msg = f"ties={rule!r} is not a rounding rule; choose one of {sorted(RULES)}"
        raise ValueError(msg)
    return rule


def single_rule(rule: RoundingRule) -> str:
    """The one rounding a rule applies to a value that is no integer accumulator (its last step)."""
    if isinstance(rule, LaneSplit):
        rule = rule.leftover
    return SECOND_STEP.get(rule, rule)


@dataclass(frozen=True)
class Target:
    """One runtime's rounding: TFLite op name -> rule ("*" for every other op), and how its ops that are
    not shifts (LOGISTIC, SOFTMAX, MEAN over other counts) are computed: "litert", "xnnpack" or "micro".

    `runtime` names the LiteRT kernels (`tfqat.tflite.litert`) or "micro" that run it here; None for a
    chip whose runtime is not on this machine. `aligned_adds`: the runtime adds int8 values without
    rescaling them, so an Add's inputs and output share one scale (`tfqat.quantization.linking`).
    `per_channel_weights`: it takes a scale per output channel. `zero_points`: it takes int8 zero points
    other than 0 (the unsigned grid's -128). `bias_bits`: the width it keeps of an int32 bias (ESP32-S3
    packs 20 bits).
    """

    name: str
    rules: dict = field(default_factory=dict)
    named: str = "litert"
    runtime: Optional[str] = None
    description: str = ""
    aligned_adds: bool = False
    per_channel_weights: bool = True
    zero_points: bool = True
    bias_bits: int = 32

    @property
    def mean_arithmetic(self) -> str:
        return MEAN_ARITHMETIC[self.named]

    def rule(self, op: str) -> RoundingRule:
        if op == MEAN_KEEP_DIMS and op not in self.rules:
            op = "MEAN"
        return self.rules.get(op, self.rules["*"])


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target(
            "builtin",
            {
                "*": "tflite_double",
                "CONV_2D": "double_half_up",
                "FULLY_CONNECTED": "double_half_up",
                "DEPTHWISE_CONV_2D": LaneSplit("double_half_up", 8, "tflite_double"),
                MEAN_KEEP_DIMS: LaneSplit("double_half_up", 16, "tflite_double"),
            },
            "litert", "builtin",
            "LiteRT's optimized CPU kernels without a delegate: the conv and fully-connected paths round "
            "their second step half up; depthwise and a MEAN that keeps its dimensions (squeeze-and-"
            "excitation) do so on whole groups of 8 and 16 channels only; a MEAN that drops them (global "
            "average pooling) runs the reference kernel",
        ),
        Target(
            "reference",
            {"*": "tflite_double", "FULLY_CONNECTED": "half_away_from_zero"},
            "litert", "reference",
            "LiteRT's reference kernels (BUILTIN_REF): MultiplyByQuantizedMultiplier's double rounding; "
            "FULLY_CONNECTED requantizes in double precision with round()",
        ),
        Target(
            "xnnpack",
            {"*": "half_even", "ADD": "half_up", "SUB": "half_up", "AVERAGE_POOL_2D": "half_away_from_zero"},
            "xnnpack", "xnnpack",
            "XNNPACK (LiteRT's default delegate): float32 requantization, round to nearest even; its "
            "ADD rounds ties up, AVERAGE_POOL_2D away from zero (measured on DenseNet121's 2x2 pools); a MEAN "
            "over a count that is not a power of two scales the raw int32 sum in float32",
        ),
        Target(
            "micro",
            {"*": "tflite_double"},
            "micro", "micro",
            "TFLite Micro's reference kernels: MultiplyByQuantizedMultiplier's double rounding everywhere; "
            "LOGISTIC in gemmlowp fixed point",
        ),
        Target("half_up", {"*": "half_up"}, "litert", None, "one rounding, ties up (CMSIS-NN); ESP-DL: esp32s3"),
        Target("half_even", {"*": "half_even"}, "litert", None, "one rounding, ties to even; ESP-DL: esp32p4"),
        Target(
            "esp32s3", {"*": "half_up"}, "espdl", None,
            "ESP-DL on ESP32-S3: one rounding, ties up; global average pooling scales the int32 sum in float32 "
            "and rounds ties up; Add sums raw int8 values (its inputs share its output's scale); per-tensor "
            "weights only; biases kept in 20 bits; no zero points (a sigmoid on 2^-7)",
            aligned_adds=True, per_channel_weights=False, zero_points=False, bias_bits=20,
        ),
        Target(
            "esp32p4", {"*": "half_even"}, "espdl", None,
            "ESP-DL on ESP32-P4: one rounding, ties to even; global average pooling scales the int32 sum in "
            "float32 and rounds ties to even; Add sums raw int8 values (its inputs share its output's scale); "
            "per-tensor or per-channel weights; no zero points (a sigmoid on 2^-7)",
            aligned_adds=True, zero_points=False,
        ),
    )
}
# A runtime without zero points (ESP-DL) holds a sigmoid's output on the signed grid 2**-7 (0 to 127 steps),
# as Espressif's esp-ppq quantizes it: the Keras model's sigmoid, the integer reference's LOGISTIC and the
# ESP-DL table all read it here.
SIGNED_SIGMOID_EXPONENT = -7
# The chips ESP-DL runs on, which `.espdl` files are written for (`tfqat.espdl`).
ESPDL_TARGETS = tuple(target.name for target in TARGETS.values() if target.named == "espdl")
# LiteRT's default path (`Interpreter(model_path=...)` on desktop and Android applies XNNPACK): what most
# users of a .tflite file run. Micro-controller and chip users name their target.
DEFAULT_TARGET = "xnnpack"
# What a config saved before it recorded its target meant (LiteRT's builtin kernels, then the only target).
SAVED_WITHOUT_TARGET = "builtin"


def target_named(name: str) -> Target:
    """The target of this name; a ValueError lists the valid names."""
    if name not in TARGETS:
        msg = f"target={name!r} is not one of {sorted(TARGETS)}"
        raise ValueError(msg)
    return TARGETS[name]
