"""Position-wise feed-forward: the same two-layer MLP applied to every position.

    FFN(x) = act(x W_inner + b_inner) W_outer + b_outer,   D -> F -> D

It holds two thirds of a layer's parameters (2 D F with F = 4 D, against 4 D^2 for
attention) and mixes nothing across positions: all token-to-token interaction is
attention's.
"""
from conformance.core import checks, trace
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Activation, Dropout
from numpy_ref.linear import Linear


class FeedForward(Module):
    def __init__(self, cfg):
        super().__init__()
        self.inner = Linear(cfg.d_model, cfg.d_ff)
        self.activation = Activation(cfg)
        self.dropout = Dropout(cfg)
        self.outer = Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x):
        checks.last_axis("x", checks.shape_of(x), self.inner.d_in, "d_model")
        tap = trace.tap_for(self)
        h = self.activation(self.inner(x))       # (B, T, F)
        return tap("output", self.outer(self.dropout(h)))  # (B, T, D)

    def backward(self, grad):
        grad = autograd.saved(self).tap("output", grad)                    # (B, T, D)
        d_h = self.dropout.backward(self.outer.backward(grad))             # (B, T, F)
        return self.inner.backward(self.activation.backward(d_h))          # (B, T, D)
