"""Mirrors `numpy_ref.feed_forward`. No differences beyond the Keras layer plumbing."""
from conformance.core import checks, trace
from tf_impl._layer import Layer
from tf_impl.activations import Activation, Dropout
from tf_impl.linear import Linear


class FeedForward(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.inner = Linear(cfg.d_model, cfg.d_ff, cfg.projection_bias, name="inner", dtype=self.dtype_policy)
        self.activation = Activation(cfg, name="activation", dtype=self.dtype_policy)
        self.dropout = Dropout(cfg, name="dropout", dtype=self.dtype_policy)
        self.outer = Linear(cfg.d_ff, cfg.d_model, cfg.projection_bias, name="outer", dtype=self.dtype_policy)

    def call(self, x):
        checks.last_axis("x", checks.shape_of(x), self.inner.d_in, "d_model")
        tap = trace.tap_for(self)
        h = self.activation(self.inner(x))       # (B, T, F)
        return tap("output", self.outer(self.dropout(h)))  # (B, T, D)


class GatedFeedForward(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.gate = Linear(cfg.d_model, cfg.d_ff, cfg.mlp_bias, name="gate", dtype=self.dtype_policy)
        self.up = Linear(cfg.d_model, cfg.d_ff, cfg.mlp_bias, name="up", dtype=self.dtype_policy)
        self.activation = Activation(cfg, name="activation", dtype=self.dtype_policy)
        self.dropout = Dropout(cfg, name="dropout", dtype=self.dtype_policy)
        self.down = Linear(cfg.d_ff, cfg.d_model, cfg.mlp_bias, name="down", dtype=self.dtype_policy)

    def call(self, x):
        checks.last_axis("x", checks.shape_of(x), self.gate.d_in, "d_model")
        tap = trace.tap_for(self)
        h = tap("gated", self.activation(self.gate(x)) * self.up(x))   # (B, T, F)
        return tap("output", self.down(self.dropout(h)))                # (B, T, D)
