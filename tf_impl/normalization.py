"""Mirrors `numpy_ref.normalization`.

Differs: gamma (ones) and beta (zeros) are Keras weights made in `__init__`; the formula is
written out with `keras.ops` (not `keras.layers.LayerNormalization`, whose epsilon is 1e-3).
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer


def layer_norm(x, gamma, beta, eps):
    mean = ops.mean(x, axis=-1, keepdims=True)                     # (..., 1)
    var = ops.mean((x - mean) ** 2, axis=-1, keepdims=True)        # (..., 1)
    return (x - mean) / ops.sqrt(var + eps) * gamma + beta         # (..., D)


class LayerNorm(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.d_model, self.eps = cfg.d_model, cfg.layer_norm_eps
        self.gamma = self.add_weight(shape=(cfg.d_model,), name="gamma", initializer="ones")
        self.beta = self.add_weight(shape=(cfg.d_model,), name="beta", initializer="zeros")

    def call(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_model, "d_model")
        return trace.tap_for(self)("output", layer_norm(x, self.gamma, self.beta, self.eps))
