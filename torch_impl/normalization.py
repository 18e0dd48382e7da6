"""Mirrors `numpy_ref.normalization`.

Differs: subclasses `nn.LayerNorm(d_model, eps=layer_norm_eps)` (gamma is `weight`, beta
is `bias`) and computes with `F.layer_norm`.
Not here: `layer_norm` (`F.layer_norm` is the function).
"""
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace


class LayerNorm(nn.LayerNorm):
    def __init__(self, cfg):
        super().__init__(cfg.d_model, eps=cfg.layer_norm_eps)
        self.d_model = cfg.d_model

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_model, "d_model")
        return trace.tap_for(self)("output", F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps))
