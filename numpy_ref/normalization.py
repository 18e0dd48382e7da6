"""Layer normalization over the last axis.

    y = (x - mean) / sqrt(var + eps) * gamma + beta

mean and var are over the feature axis D of each position separately, var the biased
(divide by D) variance, as in every framework's built-in. eps keeps the division
finite for constant inputs and is a config field: BERT 1e-12, GPT-2 and
`torch.nn.LayerNorm` 1e-5, Keras `LayerNormalization` 1e-3. Confusing them changes
outputs by about eps / var: visible in float32.
"""
import numpy as np

from conformance import checks, trace
from numpy_ref._module import Module


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)                   # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)    # (..., 1)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta   # (..., D)


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
