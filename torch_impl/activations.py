"""Mirrors `numpy_ref.activations`.

Differs: GELU is `F.gelu` (exact) and `F.gelu(approximate="tanh")`, ReLU `torch.relu`, SiLU `F.silu`;
softmax is `torch.softmax` after `torch.where(mask, x, fill)` (a non-bool 0/1 mask is
cast with `.bool()`), fully masked rows then set to 0, which also replaces the NaN of
fill = -inf. Dropout reads `nn.Module.training`; a missing `keep` mask comes from
`conformance.core.dropout_masks` when it is supplying, else from `torch.rand` on x's device (torch's
global generator: there is no `rng` attribute).
"""
import torch
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, dropout_masks, trace


def gelu(x):
    return F.gelu(x)


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def relu(x):
    return torch.relu(x)


def silu(x):
    return F.silu(x)


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu, "silu": silu}


def softmax(x, mask=None, fill=-1e9):
    """Softmax over the last axis; `mask` True = keep, broadcastable to x."""
    if mask is not None:
        x = torch.where(mask.bool(), x, fill)
    probs = torch.softmax(x, dim=-1)
    if mask is not None:  # fully masked rows are defined as zeros
        probs = torch.where(mask.any(dim=-1, keepdim=True), probs, 0)
    return probs


def softcap(x, cap):
    """cap tanh(x / cap): about x for |x| << cap, never past +-cap (Gemma 2's scores and logits)."""
    return cap * torch.tanh(x / cap)

def dropout(x, keep, rate):
    return torch.where(keep, x / (1.0 - rate), 0)


class Activation(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fn = ACTIVATIONS[cfg.activation]

    def forward(self, x):
        checks.floating("x", checks.dtype_name(x))
        return trace.tap_for(self)("output", self.fn(x))


class Softmax(nn.Module):
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


class Dropout(nn.Module):
    """Identity at inference; in training, drops the units where `keep` is False."""

    def __init__(self, cfg):
        super().__init__()
        self.rate = cfg.dropout

    def forward(self, x, keep=None):
        if not self.training or self.rate == 0.0:
            return x
        if keep is None and dropout_masks.active():  # masks shared by all three frameworks
            keep = torch.from_numpy(dropout_masks.keep(self, checks.shape_of(x), self.rate)).to(x.device)
        if keep is None:
            keep = torch.rand(x.shape, device=x.device) >= self.rate
        checks.shape("keep", checks.shape_of(keep), checks.shape_of(x), "(same as x)")
        return trace.tap_for(self)("output", dropout(x, keep, self.rate))
