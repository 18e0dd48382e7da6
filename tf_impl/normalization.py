"""Mirrors `numpy_ref.normalization`.

Differs: gamma (ones) and beta (zeros) are Keras weights made in `__init__`; the formula is
written out with `keras.ops` (not `keras.layers.LayerNormalization`, whose epsilon is 1e-3, nor
`keras.layers.RMSNormalization`, which has no offset and always scales in float32). RMSNorm's
gamma is made with `autocast=False`: under a mixed policy Keras would hand `call` a bfloat16 copy
of it, and the "all" upcast scales with the float32 weight, as torch's autocast leaves it. The
last scale is `ops.multiply`, which promotes a bfloat16 x times a float32 weight to float32 as
torch does (TensorFlow's `*` refuses two dtypes).
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer


def layer_norm(x, gamma, beta, eps):
    mean = ops.mean(x, axis=-1, keepdims=True)                     # (..., 1)
    var = ops.mean((x - mean) ** 2, axis=-1, keepdims=True)        # (..., 1)
    return (x - mean) / ops.sqrt(var + eps) * gamma + beta         # (..., D)


class LayerNorm(Layer):
    """Layer normalization over the last axis, width `d` (default d_model; ALBERT's embeddings' is E)."""

    def __init__(self, cfg, d=None, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.d_model, self.what = (cfg.d_model, "d_model") if d is None else (d, "d")
        self.eps = cfg.layer_norm_eps
        self.gamma = self.add_weight(shape=(self.d_model,), name="gamma", initializer="ones")
        self.beta = self.add_weight(shape=(self.d_model,), name="beta", initializer="zeros")

    def call(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d_model, self.what)
        return trace.tap_for(self)("output", layer_norm(x, self.gamma, self.beta, self.eps))



def norm_dtype(x, upcast):
    """The dtype RMSNorm computes its statistic in: float32 for a half-precision x (unless upcast is "none")."""
    return "float32" if upcast != "none" and checks.dtype_name(x) in checks.HALF_DTYPES else x.dtype


def rms_norm(x, gamma, eps, offset, upcast):
    h = ops.cast(x, norm_dtype(x, upcast))                              # (..., D)
    h = h / ops.sqrt(ops.mean(h * h, axis=-1, keepdims=True) + eps)     # (..., D)
    if upcast == "all":
        return ops.cast(h * (offset + ops.cast(gamma, h.dtype)), x.dtype)  # (..., D)
    return ops.multiply(ops.cast(h, x.dtype), offset + gamma)           # (..., D)


class RMSNorm(Layer):
    """RMS normalization over the last axis, width `d` (default d_model; a QK-norm's is head_dim)."""

    def __init__(self, cfg, d=None, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.d, self.what = (cfg.d_model, "d_model") if d is None else (d, "d")
        self.eps, self.offset, self.upcast = cfg.layer_norm_eps, cfg.rms_norm_offset, cfg.rms_norm_upcast
        self.gamma = self.add_weight(shape=(self.d,), name="gamma", initializer="ones", autocast=False)

    def call(self, x):
        checks.floating("x", checks.dtype_name(x))
        checks.last_axis("x", checks.shape_of(x), self.d, self.what)
        return trace.tap_for(self)("output", rms_norm(x, self.gamma, self.eps, self.offset, self.upcast))
