"""Position-wise feed-forward: the same two-layer MLP applied to every position.

    FFN(x) = act(x W_inner + b_inner) W_outer + b_outer,   D -> F -> D

It holds two thirds of a layer's parameters (2 D F with F = 4 D, against 4 D^2 for
attention) and mixes nothing across positions: all token-to-token interaction is
attention's. Its FLOPs, 4 N D F for N positions, are linear in the sequence.
"""
from conformance.core import checks, trace
from conformance.core.costs import scoped
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

    def flops(self, x, **_):
        h = (*x[:-1], self.outer.d_in)                                     # (B, T, F)
        yield from scoped("inner", self.inner.flops(x))
        yield from scoped("activation", self.activation.flops(h))
        yield from scoped("outer", self.outer.flops(h))

    def saved(self, f, x, **_):
        h = (*x[:-1], self.outer.d_in)                                     # (B, T, F)
        for name, child, shape in (("inner", self.inner, x), ("activation", self.activation, h),
                                   ("dropout", self.dropout, h), ("outer", self.outer, h)):
            yield from scoped(name, child.saved(f, shape))

    def peak(self, f, live, x, **_):
        """Inference: the input and `live[1]` (B, T, F) tensors at once."""
        B, T, D = x
        return B * T * D * f + live[1] * B * T * self.outer.d_in * f

    def backward(self, grad):
        grad = autograd.saved(self).tap("output", grad)                    # (B, T, D)
        d_h = self.dropout.backward(self.outer.backward(grad))             # (B, T, F)
        return self.inner.backward(self.activation.backward(d_h))          # (B, T, D)
