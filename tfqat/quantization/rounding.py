"""Adaptive rounding of one linear layer's power-of-two kernel (AdaRound, Nagel et al., ICML 2020).

Round-to-nearest minimizes each weight's own error, not the layer's output
error. AdaRound chooses, weight by weight, between rounding down and up so
that the layer's outputs on sample inputs stay closest to the float layer's.
For a linear layer the output error over a set of inputs depends on the data
only through second moments, so the whole search runs on small matrices:

    E||x_q W~ - x_f W||^2 = tr(W~' C_qq W~) - 2 tr(W~' C_qf W) + tr(W' C_ff W)

with x_q the inputs the quantized model feeds the layer, x_f the float
model's, and C their (cross-)covariances when the bias absorbs the mean error.
The search is AdaRound's continuous relaxation (a rectified sigmoid per
weight, annealed towards 0 or 1 by a regularizer), followed by flips: one
weight at a time, the other rounding is taken wherever it lowers the error,
until no flip does. The error is exactly quadratic in the kernel, so each
flip's gain is known in closed form and the flips are cheap; measured on
MobileNetV2's layers, flips from round-to-nearest alone already recover most
of what the relaxation finds (docs/experiments.md), and the better of the
two ends is kept.
Layouts: a kernel is grouped as (G, D, M): G independent groups (1 for
Conv2D/Dense, the channels of a DepthwiseConv2D), D inputs per output (the
patch), M outputs per group. Pure TensorFlow math; `tfqat.post_training.adaround`
collects the moments from a Keras model.
"""

from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

from tfqat.quantization.pow2 import WEIGHT_QMAX, WEIGHT_QMIN

# The rectified sigmoid's stretch (the paper's zeta and gamma): h reaches 0 and 1 exactly.
ZETA, GAMMA = 1.1, -0.1
ITERATIONS = 500
LEARNING_RATE = 0.01
REGULARIZATION = 0.1  # weight of the rounding regularizer against the output error relative to round-to-nearest
WARMUP = 0.2  # fraction of the iterations with no regularizer (the paper's warm start)
BETA_START, BETA_END = 20.0, 2.0
MIN_SAMPLES_PER_INPUT = 2  # fewer input rows per kernel input than this: too few to choose roundings from
MAX_SWEEPS = 50  # passes of flips over every weight; they stop earlier when no flip helps


class Moments(NamedTuple):
    """Second moments of a layer's quantized and float inputs, per group: (G, D, D) each, float64."""

    qq: np.ndarray
    qf: np.ndarray
    ff: np.ndarray


class Rounded(NamedTuple):
    kernel: np.ndarray  # (G, D, M), exact multiples of the scale
    nearest_error: float  # output error of round-to-nearest, relative to the float output's energy (absolute if 0)
    error: float  # output error of `kernel`, same units
    adaptive: bool  # False where round-to-nearest was as good and was kept
    flips_error: float  # flips from round-to-nearest alone
    relaxed_error: float  # flips from the relaxation's end (nan without the relaxation)


def rectified_sigmoid(v):
    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h):
    """The v with rectified_sigmoid(v) = h, for h in [0, 1)."""
    return -np.log((ZETA - GAMMA) / (np.asarray(h, np.float64) - GAMMA) - 1.0)


def nearest_steps(kernel, scale):
    """Round-to-nearest on the grid, ties up, as the weight quantizer's FakeQuant does: the integer steps."""
    return np.clip(np.floor(kernel / scale + 0.5), WEIGHT_QMIN, WEIGHT_QMAX)


def output_error(rounded, kernel, moments: Moments) -> float:
    """E||x_q W~ - x_f W||^2 summed over outputs, from the moments (float64)."""
    rounded, kernel = np.asarray(rounded, np.float64), np.asarray(kernel, np.float64)
    quad = np.einsum("gdm,gde,gem->", rounded, moments.qq, rounded)
    cross = np.einsum("gdm,gde,gem->", rounded, moments.qf, kernel)
    return float(quad - 2.0 * cross + float_energy(kernel, moments))


def float_energy(kernel, moments: Moments) -> float:
    """E||x_f W||^2: the scale output errors are measured against."""
    kernel = np.asarray(kernel, np.float64)
    return float(np.einsum("gdm,gde,gem->", kernel, moments.ff, kernel))


def adaround(kernel, scale, moments: Moments, iterations: int = ITERATIONS, samples: Optional[int] = None) -> Rounded:
    """Choose each weight's rounding direction to minimize the layer's output error.

    Args:
      kernel: float kernel (G, D, M).
      scale: its power-of-two step, broadcastable to (G, D, M).
      moments: the input moments.
      iterations: Adam steps of the relaxation (0: flips from round-to-nearest only).
      samples: how many input rows the moments come from; with fewer than MIN_SAMPLES_PER_INPUT per
        input the moments are nearly singular, any rounding can fit them, and round-to-nearest is kept.
    Returns:
      The best by output error of round-to-nearest and of the flips from it and from the relaxation's end.
    """
    kernel = np.asarray(kernel, np.float32)
    scale = np.broadcast_to(np.asarray(scale, np.float32), kernel.shape)
    energy = float_energy(kernel, moments)
    energy = energy if energy > 1e-30 else 1.0  # a constant float output: errors stay absolute
    down = np.floor(kernel / scale)
    nearest = nearest_steps(kernel, scale)
    nearest_error = output_error(nearest * scale, kernel, moments) / energy
    if samples is not None and samples < MIN_SAMPLES_PER_INPUT * kernel.shape[1]:
        return Rounded(nearest * scale, nearest_error, nearest_error, False, nearest_error, float("nan"))
    candidates = {"flips": nearest}
    if iterations > 0:
        chosen = _relaxed(down, kernel - down * scale, scale, kernel, moments, iterations, nearest_error * energy)
        candidates["relaxed"] = np.clip(down + chosen, WEIGHT_QMIN, WEIGHT_QMAX)
    errors = {"relaxed": float("nan")}
    best_steps, best_error = nearest, nearest_error
    for name, start in candidates.items():
        steps = flip_descent(start, down, scale, kernel, moments)
        errors[name] = output_error(steps * scale, kernel, moments) / energy
        if errors[name] < best_error:
            best_steps, best_error = steps, errors[name]
    return Rounded(
        (best_steps * scale).astype(np.float32), nearest_error, best_error, best_error < nearest_error,
        errors["flips"], errors["relaxed"],
    )


def flip_descent(steps, down, scale, kernel, moments: Moments, max_sweeps: int = MAX_SWEEPS) -> np.ndarray:
    """From integer `steps` (each down or down + 1), flip single weights to the other rounding while that
    lowers the output error; returns the new steps.

    With r = C_qq W~ - C_qf W (half the error's gradient), moving weight i of output m by d changes the
    error by 2 d r_im + d^2 C_qq,ii; an accepted move adds d C_qq[:, i] to r_m. All outputs move at once.
    """
    steps = np.array(steps, np.float64)
    scale = np.broadcast_to(np.asarray(scale, np.float64), steps.shape)
    down = np.asarray(down, np.float64)
    qq = np.asarray(moments.qq, np.float64)
    residual = qq @ (steps * scale) - moments.qf @ np.asarray(kernel, np.float64)
    diagonal = np.diagonal(qq, axis1=1, axis2=2)  # (G, D)
    tolerance = 1e-12 * max(float(np.abs(diagonal).max()), 1e-30) * float(scale.max()) ** 2
    for _ in range(max_sweeps):
        flipped = 0
        for i in range(steps.shape[1]):
            current = steps[:, i, :]
            other = np.clip(np.where(current > down[:, i, :], down[:, i, :], down[:, i, :] + 1.0), WEIGHT_QMIN, WEIGHT_QMAX)
            move = (other - current) * scale[:, i, :]
            gain = 2.0 * move * residual[:, i, :] + move * move * diagonal[:, i, None]
            accept = gain < -tolerance
            if not accept.any():
                continue
            move = np.where(accept, move, 0.0)
            steps[:, i, :] = np.where(accept, other, current)
            residual += qq[:, :, i, None] * move[:, None, :]
            flipped += int(accept.sum())
        if flipped == 0:
            break
    return steps


def _relaxed(down, remainder, scale, kernel, moments, iterations, norm):
    """AdaRound's relaxation: Adam on v, h(v) in [0, 1] the part rounded up; returns the final 0/1 choice."""
    qq = tf.constant(moments.qq, tf.float32)
    target = tf.constant(np.einsum("gde,gem->gdm", moments.qf, np.asarray(kernel, np.float64)), tf.float32)
    down, scale = tf.constant(down, tf.float32), tf.constant(scale, tf.float32)
    v = tf.Variable(inverse_rectified_sigmoid(np.clip(remainder / scale, 0.0, 0.999)).astype(np.float32))
    optimizer = _adam(v)
    norm = tf.constant(max(norm, 1e-30), tf.float32)  # round-to-nearest's error: the regularizer's weight is relative
    warmup = int(WARMUP * iterations)

    @tf.function
    def run():
        for step in tf.range(iterations):
            progress = tf.cast(step - warmup, tf.float32) / float(max(iterations - warmup, 1))
            beta = BETA_START + (BETA_END - BETA_START) * tf.clip_by_value(progress, 0.0, 1.0)
            weight = tf.where(step < warmup, 0.0, REGULARIZATION)
            with tf.GradientTape() as tape:
                h = rectified_sigmoid(v)
                rounded = tf.clip_by_value(down + h, WEIGHT_QMIN, WEIGHT_QMAX) * scale
                # tr(W~' C_qq W~) - 2 tr(W~' C_qf W): the output error up to a constant.
                error = tf.reduce_sum(rounded * (tf.linalg.matmul(qq, rounded) - 2.0 * target)) / norm
                regularizer = tf.reduce_mean(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta))
                loss = error + weight * regularizer
            optimizer(tape.gradient(loss, v))

    run()
    return (rectified_sigmoid(v).numpy() >= 0.5).astype(np.float32)


def _adam(variable, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """A plain Adam update for one variable, usable inside a tf.function loop (no Keras optimizer state)."""
    m = tf.Variable(tf.zeros_like(variable))
    s = tf.Variable(tf.zeros_like(variable))
    t = tf.Variable(0.0)

    def update(gradient):
        t.assign_add(1.0)
        m.assign(beta1 * m + (1.0 - beta1) * gradient)
        s.assign(beta2 * s + (1.0 - beta2) * tf.square(gradient))
        corrected = m / (1.0 - tf.pow(beta1, t)), s / (1.0 - tf.pow(beta2, t))
        variable.assign_sub(LEARNING_RATE * corrected[0] / (tf.sqrt(corrected[1]) + epsilon))

    return update
