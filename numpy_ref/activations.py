"""Pointwise nonlinearities, softmax and dropout.

GELU(x) = x * Phi(x), Phi the standard normal CDF.
  exact ("gelu", BERT):      0.5 x (1 + erf(x / sqrt 2))
  tanh ("gelu_tanh", GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
(Python floats, not np.sqrt: a NumPy float64 scalar would silently promote float32
arrays to float64.) The two differ by up to about 1e-3 (near |x| = 2): enough to fail a float32
comparison, so which one a model uses is a config field.

softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x). Subtracting the row maximum
changes nothing mathematically and keeps exp() from overflowing: the largest term is
exp(0) = 1. Masked positions get `fill` before the softmax (so exp(fill - max) = 0 for
any fill <= -1e4 in float32/64). A row with every position masked has nothing to
attend to: it is defined as all zeros, not NaN (fill = -inf) and not uniform
(finite fill), in every framework.

Dropout in training keeps each unit with probability 1 - rate and scales the kept
ones by 1 / (1 - rate), so the expected activation is unchanged and inference needs
no rescaling. A supplied `keep` mask makes all three frameworks drop the same units; so
does `conformance.dropout_masks.supplying`, which draws each call's mask from NumPy by module path.
"""
import math

import numpy as np
from scipy.special import erf

from conformance import checks, dropout_masks, trace
from numpy_ref._module import Module


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x):
    return np.maximum(x, 0)


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu}


def softmax(x, mask=None, fill=-1e9):
    """Stable softmax over the last axis; `mask` True = keep, broadcastable to x."""
    if mask is not None:
        x = np.where(mask, x, np.asarray(fill, x.dtype))
    row_max = x.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0)  # rows masked with -inf
    e = np.exp(x - row_max)
    total = e.sum(axis=-1, keepdims=True)  # >= 1 (the max term is exp(0)) unless the row is all -inf
    probs = e / np.where(total > 0, total, 1)
    if mask is not None:  # fully masked rows are defined as zeros
        probs = np.where(np.any(mask, axis=-1, keepdims=True), probs, 0)
    return probs.astype(x.dtype, copy=False)


def dropout(x, keep, rate):
    return np.where(keep, x / (1.0 - rate), 0).astype(x.dtype, copy=False)


class Activation(Module):
    def __init__(self, cfg):
        super().__init__()
        self.fn = ACTIVATIONS[cfg.activation]

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        return trace.tap_for(self)("output", self.fn(x))


class Softmax(Module):
    """The masked softmax of attention: scores (B, H, T, S), mask (B, 1 or H, T, S)."""

    def __init__(self, cfg):
        super().__init__()
        self.fill = cfg.mask_fill

    def forward(self, scores, mask=None):
        checks.floating("scores", checks.dtype_name(scores))
        checks.rank("scores", checks.shape_of(scores), 4, "(B, H, T, S)")
        if mask is not None:
            checks.attention_mask4("mask", checks.spec(mask), checks.shape_of(scores))
        return trace.tap_for(self)("output", softmax(scores, mask, self.fill))


class Dropout(Module):
    """Identity at inference; in training, drops the units where `keep` is False."""

    def __init__(self, cfg):
        super().__init__()
        self.rate = cfg.dropout
        self.rng = np.random.default_rng()

    def forward(self, x, keep=None):
        if not self.training or self.rate == 0.0:
            return x
        if keep is None and dropout_masks.active():  # masks shared by all three frameworks
            keep = dropout_masks.keep(self, checks.shape_of(x), self.rate)
        if keep is None:
            keep = self.rng.random(x.shape) >= self.rate
        checks.shape("keep", checks.shape_of(keep), checks.shape_of(x), "(same as x)")
        return trace.tap_for(self)("output", dropout(x, keep, self.rate))

