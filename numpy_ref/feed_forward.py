"""Position-wise feed-forward: the same two-layer MLP applied to every position.

    FFN(x) = act(x W_inner + b_inner) W_outer + b_outer,   D -> F -> D

Its biases follow `cfg.projection_bias` (T5 has none; ViT keeps them without its qkv
bias). It holds two thirds of a layer's parameters (2 D F with F = 4 D, against 4 D^2 for
attention) and mixes nothing across positions: all token-to-token interaction is
attention's. Its FLOPs, 4 N D F for N positions, are linear in the sequence.

The gated feed-forward (Shazeer 2020, "GLU Variants Improve Transformer") multiplies a
second projection into the activation:

    GatedFFN(x) = (act(x W_gate) * (x W_up)) W_down,   D -> F (twice) -> D

SwiGLU with act = SiLU (Llama, Mistral, Qwen2), GeGLU with tanh GELU (Gemma): one projection
decides, per feature and position, how much of the other passes. Three D x F matrices instead
of two, so at equal parameters F shrinks from 4 D to 8/3 D (Llama rounds it up to a multiple
of 256: 11008 for D = 4096). Biases follow `mlp_bias` (Llama's field; False in every released
model). Costs: 6 N D F FLOPs plus the activation and the product; backward keeps the input
(shared by gate and up), the gate's output, the activation's and up's outputs (the product
needs both) and the product.
"""
from conformance.core import checks, trace
from conformance.core.costs import PER_ELEMENT, Op, Saved, rows, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import Activation, Dropout
from numpy_ref.linear import Linear


class FeedForward(Module):
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


class GatedFeedForward(Module):
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

    def flops(self, x, **_):
        h = (*x[:-1], self.down.d_in)                                      # (B, T, F)
        yield from scoped("gate", self.gate.flops(x))
        yield from scoped("activation", self.activation.flops(h))
        yield from scoped("up", self.up.flops(x))
        yield Op("gated", "elementwise", rows(h) * self.down.d_in * PER_ELEMENT["gate"])
        yield from scoped("down", self.down.flops(h))

    def saved(self, f, x, **_):
        """gate and up share their input: it is kept once (gate's)."""
        h = (*x[:-1], self.down.d_in)                                      # (B, T, F)
        yield from scoped("gate", self.gate.saved(f, x))
        yield from scoped("activation", self.activation.saved(f, h))
        yield Saved("", "activation and up outputs, for the product", 2 * rows(h) * self.down.d_in * f)
        for name, child in (("dropout", self.dropout), ("down", self.down)):
            yield from scoped(name, child.saved(f, h))

    def peak(self, f, live, x, **_):
        """Inference: the input and `live[1]` + 1 (B, T, F) tensors at once: FeedForward's, and
        up's output waiting beside the activation's for the product."""
        B, T, D = x
        return B * T * D * f + (live[1] + 1) * B * T * self.down.d_in * f

    def backward(self, grad):
        """h = a * u, a = act(x W_gate), u = x W_up:  da = dh * u,  du = dh * a; x feeds both
        projections, so dx sums the two paths."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                   # (B, T, D)
        d_h = saved.tap("gated", self.dropout.backward(self.down.backward(grad)))  # (B, T, F)
        a, u = autograd.last_output(self.activation), autograd.last_output(self.up)  # (B, T, F)
        d_x = self.up.backward(d_h * a)                                    # (B, T, D)
        return d_x + self.gate.backward(self.activation.backward(d_h * u))  # (B, T, D)
