"""The options of a flowers run, apart from the pipeline so the CLI can read them without loading TensorFlow."""

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from tfqat.distribute import STRATEGIES
from tfqat.targets import DEFAULT_TARGET, TARGETS
from tfqat.flowers.methods import DEFAULT_METHODS, FLOAT, STAGES
from tfqat.flowers.networks import DEFAULT_NETWORK, network_named


@dataclass(frozen=True)
class RunOptions:
    """Options of `run`; the defaults are the published configuration."""

    out: Path = Path("runs/flowers")
    data: Optional[str] = None  # a folder of class sub-folders; None: tensorflow-datasets tf_flowers
    model: str = DEFAULT_NETWORK  # the Keras application trained on flowers (tfqat.flowers.networks)
    weights: Optional[str] = "imagenet"  # "imagenet", a local .h5 file, or None (random init)
    image_size: int = 224
    batch_size: int = 32
    head_epochs: int = 3
    fine_tune_epochs: int = 6
    head_learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    qat_epochs: int = 8
    qat_learning_rate: float = 1e-4
    qat_distillation: bool = False  # both QAT models learn the float model's class probabilities instead of labels
    restore_best: bool = True  # every fit ends on its epoch with the lowest validation loss, not its last
    equalize: bool = False  # tfqat's QAT starts from the cross-layer-equalized model (tfqat.equalize)
    calibration_images: int = 512
    adaround_iterations: int = 500  # optimizer steps per layer of AdaRound's relaxation (tfqat.adaround)
    run_eagerly: bool = False  # fits run eagerly: quicker than tracing for a handful of steps, slower for more
    per_channel: bool = False
    trained_thresholds: bool = False  # tfqat's QAT methods learn their power-of-two scales (TQT)
    unsigned_activations: bool = False  # tfqat's methods quantize ReLU outputs unsigned ([0, 255] * 2**k)
    target: str = DEFAULT_TARGET  # the runtime tfqat's Keras models round as (tfqat.targets), checked on its kernels
    peers: bool = True
    seed: int = 0
    quick: bool = False
    export_dir: Optional[Path] = None
    stages: tuple = (FLOAT, *DEFAULT_METHODS)  # any of tfqat.flowers.methods.STAGES
    strategy: str = "default"  # see tfqat.STRATEGIES
    float_model: Optional[str] = None  # a saved float Keras model to start from instead of training
    command: str = ""

    def __post_init__(self):
        positive = ("image_size", "batch_size", "calibration_images", "adaround_iterations")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"RunOptions.{name}={getattr(self, name)!r} must be at least 1")
        network_named(self.model)  # a ValueError naming the networks
        if self.target not in TARGETS:
            raise ValueError(f"RunOptions.target={self.target!r} is not one of {sorted(TARGETS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"RunOptions.strategy={self.strategy!r} is not one of {STRATEGIES}")
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown:
            raise ValueError(f"RunOptions.stages has unknown stages {unknown}; choose from {', '.join(STAGES)}")
        for name in ("head_epochs", "fine_tune_epochs", "qat_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"RunOptions.{name}={getattr(self, name)!r} must be 0 or more")


# Options that do not change results, so a run may resume with other values.
NOT_SETTINGS = ("out", "export_dir", "stages", "peers", "strategy", "command")
# What runs recorded before a setting existed did, where that is not the setting's default.
BEFORE_RECORDED = {"restore_best": False}


def changed_settings(recorded: dict, current: dict) -> list:
    """The settings a run recorded that differ from `current`, as `name: recorded -> current`.

    A setting added since that run was recorded counts as what that run did, so such runs still resume.
    """
    defaults = {**{f.name: f.default for f in fields(RunOptions)}, **BEFORE_RECORDED}
    return [
        f"{k}: {recorded.get(k, defaults[k])!r} -> {v!r}" for k, v in current.items() if recorded.get(k, defaults[k]) != v
    ]
QUICK = dict(
    image_size=96, head_epochs=1, fine_tune_epochs=1, qat_epochs=1, calibration_images=32, batch_size=16,
    adaround_iterations=100, run_eagerly=True,
)
QUICK_IMAGES = {"train": 96, "validation": 32, "test": 64}


def recorded_settings(out) -> dict:
    """The settings of the run already in the folder `out`, or {} when there is none."""
    path = Path(out) / "state.json"
    return json.loads(path.read_text()).get("settings", {}) if path.is_file() else {}
