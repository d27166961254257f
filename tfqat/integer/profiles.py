"""How each runtime rounds each shift-only op, as measured (benchmarks/executor.py --rules): one row per runtime.

A profile names, per TFLite op, the tie rule that reproduces the runtime's int8 kernel bit for bit on a
power-of-two model, and how the ops that are not shifts are computed ("litert" or "micro"). Measured
with ai-edge-litert 2.3.0 and tflite-micro 0.dev20261023182759 on x86-64; ops a row leaves out use its
"*" rule. The evidence and the cases no rule reproduces are in benchmarks/results/executor.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tfqat.integer.rounding import LaneSplit


@dataclass(frozen=True)
class Profile:
    """One runtime's rounding: op name (or variant: "MEAN keep_dims") -> rule ("*" for every other op) and the
    named ops' flavour."""

    rules: dict = field(default_factory=dict)
    named: str = "litert"
    description: str = ""

    def rule(self, *keys: str):
        """The rule of the first key the row has (an op's variant, e.g. "MEAN keep_dims", then its name), else "*"."""
        return next((self.rules[k] for k in keys if k in self.rules), self.rules["*"])


PROFILES: dict[str, Profile] = {
    "reference": Profile(
        {"*": "tflite_double", "FULLY_CONNECTED": "half_away_from_zero"},
        "litert",
        "LiteRT's reference kernels (BUILTIN_REF): MultiplyByQuantizedMultiplier's double rounding; "
        "FULLY_CONNECTED requantizes in double precision with round()",
    ),
    "builtin": Profile(
        {
            "*": "tflite_double",
            "CONV_2D": "double_half_up",
            "FULLY_CONNECTED": "double_half_up",
            "DEPTHWISE_CONV_2D": LaneSplit("double_half_up", 8, "tflite_double"),
            "MEAN keep_dims": LaneSplit("double_half_up", 16, "tflite_double"),
        },
        "litert",
        "LiteRT's optimized CPU kernels without a delegate: the conv and fully-connected paths round "
        "their second step half up; depthwise does so on whole groups of 8 channels only, a MEAN that keeps "
        "its dimensions (squeeze-and-excitation) on whole groups of 16",
    ),
    "xnnpack": Profile(
        {"*": "half_even", "ADD": "half_up", "SUB": "half_up"},
        "litert",
        "XNNPACK (LiteRT's default delegate): float32 requantization, round to nearest even; its "
        "ADD rounds ties up; a MEAN over a count that is not a power of two is not reproduced",
    ),
    "micro": Profile(
        {"*": "tflite_double"},
        "micro",
        "TFLite Micro's reference kernels: MultiplyByQuantizedMultiplier's double rounding everywhere; "
        "LOGISTIC in gemmlowp fixed point",
    ),
}
