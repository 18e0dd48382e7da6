"""Layer normalization over the last axis.

    y = (x - mean) / sqrt(var + eps) * gamma + beta

mean and var are over the feature axis D of each position separately, var the biased
(divide by D) variance, as in every framework's built-in. eps keeps the division
finite for constant inputs and is a config field: BERT 1e-12, GPT-2 and
`torch.nn.LayerNorm` 1e-5, Keras `LayerNormalization` 1e-3. Confusing them changes
outputs by about eps / var: visible in float32.

Costs: 7 FLOPs an element (mean, subtract, square, variance sum, divide, * gamma, + beta) and 4 a
row (two divides by D, + eps, sqrt); backward keeps the input and each row's mean and 1/std.
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import LAYER_NORM_PER_ROW, PER_ELEMENT, Op, Saved, rows
from numpy_ref import autograd
from numpy_ref._module import Module


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)                   # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)    # (..., 1)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta   # (..., D)


def layer_norm_backward(grad, x, gamma, eps):
    """With s = sqrt(var + eps), x_hat = (x - mean) / s and g = dy * gamma (the gradient of x_hat):

        dx = (g - mean(g) - x_hat * mean(g * x_hat)) / s
        dgamma = sum over positions of dy * x_hat,   dbeta = sum over positions of dy

    Three terms because x reaches x_hat three ways: directly (g / s); through the mean, which
    every x_i shifts equally (- mean(g) / s: the output cannot move along (1, ..., 1)); and
    through the variance (- x_hat mean(g x_hat) / s: nor along x_hat itself, its scale). With
    eps = 0, dx is g with its components along 1 and x_hat projected out, divided by s.
    Returns (dx, dgamma, dbeta).
    """
    mean = x.mean(axis=-1, keepdims=True)                    # (..., 1)
    s = np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    x_hat = (x - mean) / s                                   # (..., D)
    g = grad * gamma                                         # (..., D)
    d_x = (g - g.mean(axis=-1, keepdims=True)
           - x_hat * (g * x_hat).mean(axis=-1, keepdims=True)) / s     # (..., D)
    D = x.shape[-1]
    return d_x, (grad * x_hat).reshape(-1, D).sum(axis=0), grad.reshape(-1, D).sum(axis=0)  # (D,)


class LayerNorm(Module):
    def __init__(self, cfg):
        super().__init__()
        self.d_model, self.eps = cfg.d_model, cfg.layer_norm_eps
        self.gamma = self.param("gamma", cfg.d_model)
        self.beta = self.param("beta", cfg.d_model)

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_model, "d_model")
        return trace.tap_for(self)("output", layer_norm(x, self.gamma, self.beta, self.eps))

    def flops(self, x, **_):
        yield Op("", "norm", rows(x) * (PER_ELEMENT["layer_norm"] * self.d_model + LAYER_NORM_PER_ROW))

    def saved(self, f, x, **_):
        yield Saved("", "input", rows(x) * self.d_model * f)
        yield Saved("", "mean and 1/std", 2 * rows(x) * f)

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                             # (..., D)
        d_x, d_gamma, d_beta = layer_norm_backward(grad, saved.inputs["x"], self.gamma, self.eps)
        autograd.accumulate(self, "gamma", d_gamma)
        autograd.accumulate(self, "beta", d_beta)
        return d_x                                                                   # (..., D)
