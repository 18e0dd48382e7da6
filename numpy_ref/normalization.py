"""Layer normalization and RMS normalization over the last axis.

    y = (x - mean) / sqrt(var + eps) * gamma + beta

mean and var are over the feature axis D of each position separately, var the biased
(divide by D) variance, as in every framework's built-in. eps keeps the division
finite for constant inputs and is a config field: BERT 1e-12, GPT-2 and
`torch.nn.LayerNorm` 1e-5, Keras `LayerNormalization` 1e-3. Confusing them changes
outputs by about eps / var: visible in float32.

Costs: 7 FLOPs an element (mean, subtract, square, variance sum, divide, * gamma, + beta)
and 4 a row (two divides by D, + eps, sqrt); backward keeps the input and each row's mean
and 1/std.

RMSNorm (Zhang & Sennrich 2019; LLaMA, Mistral, Qwen2, Gemma) drops the mean and the shift:

    y = x / rms(x) * (offset + gamma),   rms(x) = sqrt(mean(x^2) + eps)

Re-centring turned out to matter less than re-scaling, and leaving it out saves a reduction
over D and D parameters (beta). On a zero-mean row it is layer norm exactly (var = mean(x^2)
there). Gemma stores gamma around 0 and scales by 1 + gamma (`rms_norm_offset` 1), Llama
around 1 (offset 0). Its eps is layer norm's field: 1e-5 (Llama 2/3, Mistral) or 1e-6 (Qwen2,
Gemma). A QK-norm is an RMSNorm of width Dh over each head's q and k.

In half precision the statistic is computed in float32 (`rms_norm_upcast`), and where the
cast back happens is a real divergence between libraries: "statistic" (transformers' Llama)
casts the normalized x back to the input dtype and then scales, "all" (transformers' Gemma,
keras-hub) scales in float32 and casts last, "none" stays in the input dtype. In float32 and
float64 the three are one computation.

Costs: 4 FLOPs an element (square, sum, divide by the rms, * (offset + gamma)) and 3 a row
(divide by D, + eps, sqrt); offset + gamma is D FLOPs a call, a change of the weights, not
counted. What torch_impl's autograd keeps: the input, each row's rms, the normalized x and
offset + gamma.
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import LAYER_NORM_PER_ROW, PER_ELEMENT, RMS_NORM_PER_ROW, Op, Saved, rows
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
    """Layer normalization over the last axis, width `d` (default d_model; ALBERT's embeddings' is E)."""

    def __init__(self, cfg, d=None):
        super().__init__()
        self.d_model, self.what = (cfg.d_model, "d_model") if d is None else (d, "d")
        self.eps = cfg.layer_norm_eps
        self.gamma = self.param("gamma", self.d_model)
        self.beta = self.param("beta", self.d_model)

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_model, self.what)
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


def norm_dtype(x, upcast):
    """The dtype RMSNorm computes its statistic in: float32 for a half-precision x (unless upcast is "none")."""
    return np.dtype("float32") if upcast != "none" and checks.dtype_name(x) in checks.HALF_DTYPES else x.dtype


def rms_norm(x, gamma, eps, offset, upcast):
    h = x.astype(norm_dtype(x, upcast), copy=False)                     # (..., D)
    h = h / np.sqrt((h * h).mean(axis=-1, keepdims=True) + eps)         # (..., D)
    if upcast == "all":
        return (h * (offset + gamma.astype(h.dtype))).astype(x.dtype)   # (..., D)
    return h.astype(x.dtype) * (offset + gamma)                         # (..., D)


def rms_norm_backward(grad, x, gamma, eps, offset):
    """With r = 1 / sqrt(mean(x^2) + eps), x_hat = x r and g = dy * (offset + gamma):

        dx = r (g - x_hat * mean(g * x_hat)),   dgamma = sum over positions of dy * x_hat

    from dr/dx_j = -r^3 x_j / D: x reaches y directly (g r) and through r, which every x_j moves
    in proportion to x_j. It is layer norm's formula without the mean term (nothing is centred,
    so the output can move along (1, ..., 1)); with eps = 0, dx is orthogonal to x, as scaling a
    row does not change its output. Returns (dx, dgamma).
    """
    r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)        # (..., 1)
    x_hat = x * r                                                        # (..., D)
    g = grad * (offset + gamma)                                          # (..., D)
    d_x = r * (g - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))     # (..., D)
    D = x.shape[-1]
    return d_x, (grad * x_hat).reshape(-1, D).sum(axis=0)               # (D,)


class RMSNorm(Module):
    """RMS normalization over the last axis, width `d` (default d_model; a QK-norm's is head_dim)."""

    def __init__(self, cfg, d=None):
        super().__init__()
        self.d, self.what = (cfg.d_model, "d_model") if d is None else (d, "d")
        self.eps, self.offset, self.upcast = cfg.layer_norm_eps, cfg.rms_norm_offset, cfg.rms_norm_upcast
        self.gamma = self.param("gamma", self.d)

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d, self.what)
        return trace.tap_for(self)("output", rms_norm(x, self.gamma, self.eps, self.offset, self.upcast))

    def flops(self, x, **_):
        yield Op("", "norm", rows(x) * (PER_ELEMENT["rms_norm"] * self.d + RMS_NORM_PER_ROW))

    def saved(self, f, x, **_):
        yield Saved("", "input", rows(x) * self.d * f)
        yield Saved("", "rms", rows(x) * f)
        yield Saved("", "normalized x", rows(x) * self.d * f)
        yield Saved("", "offset + gamma", self.d * f)

    def backward(self, grad):
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                             # (..., D)
        d_x, d_gamma = rms_norm_backward(grad, saved.inputs["x"], self.gamma, self.eps, self.offset)
        autograd.accumulate(self, "gamma", d_gamma)
        return d_x                                                                   # (..., D)
