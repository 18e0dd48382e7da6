"""Mirrors `numpy_ref.normalization`.

Differs: `LayerNorm` subclasses `nn.LayerNorm(d_model, eps=layer_norm_eps)` (gamma is `weight`,
beta is `bias`) and computes with `F.layer_norm`. `RMSNorm` is not `nn.RMSNorm`: `F.rms_norm` has
no offset and one cast order of its own, so the formula is written out and the parameter is
declared here, under its canonical name `gamma` (a parameter of none of torch's layers). The
square is `h * h` and the division `/ torch.sqrt`, never `pow` or `rsqrt`, which CUDA autocast
would run in float32 behind the config's back.
Not here: `layer_norm` (`F.layer_norm` is the function).
"""
import torch
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace


class LayerNorm(nn.LayerNorm):
    """Layer normalization over the last axis, width `d` (default d_model; ALBERT's embeddings' is E)."""

    def __init__(self, cfg, d=None):
        super().__init__(cfg.d_model if d is None else d, eps=cfg.layer_norm_eps)
        self.d_model, self.what = (cfg.d_model, "d_model") if d is None else (d, "d")

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_model, self.what)
        return trace.tap_for(self)("output", F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps))


def norm_dtype(x, upcast):
    """The dtype RMSNorm computes its statistic in: float32 for a half-precision x (unless upcast is "none")."""
    return torch.float32 if upcast != "none" and checks.dtype_name(x) in checks.HALF_DTYPES else x.dtype


def rms_norm(x, gamma, eps, offset, upcast):
    h = x.to(norm_dtype(x, upcast))                                     # (..., D)
    h = h / torch.sqrt((h * h).mean(dim=-1, keepdim=True) + eps)        # (..., D)
    if upcast == "all":
        return (h * (offset + gamma.to(h.dtype))).to(x.dtype)           # (..., D)
    return h.to(x.dtype) * (offset + gamma)                             # (..., D)


class RMSNorm(nn.Module):
    """RMS normalization over the last axis, width `d` (default d_model; a QK-norm's is head_dim)."""

    def __init__(self, cfg, d=None):
        super().__init__()
        self.d, self.what = (cfg.d_model, "d_model") if d is None else (d, "d")
        self.eps, self.offset, self.upcast = cfg.layer_norm_eps, cfg.rms_norm_offset, cfg.rms_norm_upcast
        self.gamma = nn.Parameter(torch.ones(self.d))

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d, self.what)
        return trace.tap_for(self)("output", rms_norm(x, self.gamma, self.eps, self.offset, self.upcast))
