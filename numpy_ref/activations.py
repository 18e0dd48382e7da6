"""Pointwise nonlinearities, softmax and dropout.

GELU(x) = x * Phi(x), Phi the standard normal CDF.
  exact ("gelu", BERT):      0.5 x (1 + erf(x / sqrt 2))
  tanh ("gelu_tanh", GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
(Python floats, not np.sqrt: a NumPy float64 scalar would silently promote float32
arrays to float64.) The two differ by up to about 1e-3 (near |x| = 2): enough to fail a float32
comparison, so which one a model uses is a config field.

SiLU(x) = x sigmoid(x) = x / (1 + exp(-x)) ("silu", also swish): the activation of Llama's
SwiGLU feed-forward. Like GELU it is x times a smooth step (the logistic instead of the normal
CDF: about 1.702 GELU(x / 1.702)), smooth and slightly negative below 0, its minimum -0.278 at
x = -1.278.

softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x). Subtracting the row maximum
changes nothing mathematically and keeps exp() from overflowing: the largest term is
exp(0) = 1. Masked positions get `fill` before the softmax (so exp(fill - max) = 0 for
any fill <= -1e4 in float32/64). A row with every position masked has nothing to
attend to: it is defined as all zeros, not NaN (fill = -inf) and not uniform
(finite fill), in every framework.

Dropout in training keeps each unit with probability 1 - rate and scales the kept
ones by 1 / (1 - rate), so the expected activation is unchanged and inference needs
no rescaling. A supplied `keep` mask makes all three frameworks drop the same units; so
does `conformance.core.dropout_masks.supplying`, which draws each call's mask from NumPy
by module path.
"""
import math

import numpy as np
from scipy.special import erf, expit

from conformance.core import checks, dropout_masks, trace
from conformance.core.costs import BOOL, PER_ELEMENT, Op, Saved, elements
from numpy_ref import autograd
from numpy_ref._module import Module


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x):
    return np.maximum(x, 0)


def silu(x):
    return x * expit(x)  # expit = sigmoid, without exp(-x) overflowing for very negative x


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu, "silu": silu}


def gelu_backward(grad, x):
    """d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the normal density.

    The second term is why GELU is not just a smoothed ReLU: its slope is negative below x = -0.75.
    """
    pdf = np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)
    return grad * (0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * pdf)


def gelu_tanh_backward(grad, x):
    """y = 0.5 x (1 + tanh u),  u = c (x + a x^3),  c = sqrt(2/pi),  a = 0.044715:

        dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 a x^2)
    """
    c = math.sqrt(2.0 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x**3))
    return grad * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * c * (1.0 + 3 * 0.044715 * x**2))


def relu_backward(grad, x):
    """Slope 1 where x > 0, else 0 (at x = 0 exactly, 0: the choice every framework makes)."""
    return np.where(x > 0, grad, 0)


def silu_backward(grad, x):
    """d/dx [x s(x)] = s(x) + x s(x) (1 - s(x)) = s(x) (1 + x (1 - s(x))),  s the sigmoid, s' = s (1 - s).

    Like GELU's, the slope is negative below x = -1.278 (the minimum) and tends to 1 above (it
    overshoots to 1.1 near x = 2.4 before settling).
    """
    s = expit(x)
    return grad * s * (1.0 + x * (1.0 - s))


ACTIVATION_BACKWARDS = {"gelu": gelu_backward, "gelu_tanh": gelu_tanh_backward, "relu": relu_backward,
                        "silu": silu_backward}


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


def softmax_backward(grad, probs, mask=None):
    """dx = p * (dp - sum_j p_j dp_j), over the last axis.

    From dp_i/dx_j = p_i (delta_ij - p_j): raising one score raises its own probability and
    lowers every other in proportion, since the row sums to 1. The Jacobian is never formed:
    the row sum is one dot product per row. A position masked before the softmax had its score
    replaced by `fill`, so its score gets no gradient (`mask`); where p = 0 (masked, or a fully
    masked row, defined as zeros) the formula gives 0 already.
    """
    d_x = probs * (grad - (probs * grad).sum(axis=-1, keepdims=True))
    return d_x if mask is None else np.where(mask, d_x, 0)


def softcap(x, cap):
    """cap tanh(x / cap): about x for |x| << cap, never past +-cap (Gemma 2's scores and logits)."""
    return cap * np.tanh(x / cap)


def softcap_backward(grad, capped, cap):
    """d/dx cap tanh(x / cap) = 1 - tanh^2(x / cap) = 1 - (y / cap)^2, from the output y alone."""
    return grad * (1.0 - (capped / cap) ** 2)

def dropout(x, keep, rate):
    return np.where(keep, x / (1.0 - rate), 0).astype(x.dtype, copy=False)


def dropout_backward(grad, keep, rate):
    """The same mask and scale: a dropped unit passes no gradient, a kept one dy / (1 - rate)."""
    return np.where(keep, grad / (1.0 - rate), 0)


class Activation(Module):
    def __init__(self, cfg):
        super().__init__()
        self.kind = cfg.activation
        self.fn = ACTIVATIONS[cfg.activation]

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        return trace.tap_for(self)("output", self.fn(x))

    def flops(self, x, **_):
        yield Op("", "activation", elements(x) * PER_ELEMENT[self.kind])

    def saved(self, f, x, **_):
        yield Saved("", "input", elements(x) * f)

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)
        return ACTIVATION_BACKWARDS[self.kind](grad, saved.inputs["x"])


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

    def flops(self, scores, **_):
        yield Op("", "softmax", elements(scores) * PER_ELEMENT["softmax"], pairs=True)

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                          # (B, H, T, S)
        return softmax_backward(grad, saved.taps["output"], saved.inputs["mask"])  # (B, H, T, S)


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
        autograd.save(self, keep=keep)  # drawn here: backward must drop the same units
        return trace.tap_for(self)("output", dropout(x, keep, self.rate))

    def flops(self, x, **_):
        """The identity at inference: nothing."""
        return iter(())

    def saved(self, f, x, **_):
        """In training, the keep mask: backward must drop the same units."""
        if self.rate > 0:
            yield Saved("", "keep mask", elements(x) * BOOL)

    def backward(self, grad):
        saved = autograd.saved(self)
        if "keep" not in saved.extras:  # inference (or rate 0): the identity
            return grad
        grad = saved.tap("output", grad)
        return dropout_backward(grad, saved.extras["keep"], self.rate)

