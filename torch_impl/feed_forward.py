"""Mirrors `numpy_ref.feed_forward`. No differences beyond the torch building blocks."""
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import Activation, Dropout
from torch_impl.linear import Linear


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.inner = Linear(cfg.d_model, cfg.d_ff, cfg.projection_bias)
        self.activation = Activation(cfg)
        self.dropout = Dropout(cfg)
        self.outer = Linear(cfg.d_ff, cfg.d_model, cfg.projection_bias)

    def forward(self, x):
        checks.last_axis("x", checks.shape_of(x), self.inner.d_in, "d_model")
        tap = trace.tap_for(self)
        h = self.activation(self.inner(x))       # (B, T, F)
        return tap("output", self.outer(self.dropout(h)))  # (B, T, D)


class GatedFeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate = Linear(cfg.d_model, cfg.d_ff, cfg.mlp_bias)
        self.up = Linear(cfg.d_model, cfg.d_ff, cfg.mlp_bias)
        self.activation = Activation(cfg)
        self.dropout = Dropout(cfg)
        self.down = Linear(cfg.d_ff, cfg.d_model, cfg.mlp_bias)

    def forward(self, x):
        checks.last_axis("x", checks.shape_of(x), self.gate.d_in, "d_model")
        tap = trace.tap_for(self)
        h = tap("gated", self.activation(self.gate(x)) * self.up(x))   # (B, T, F)
        return tap("output", self.down(self.dropout(h)))                # (B, T, D)
