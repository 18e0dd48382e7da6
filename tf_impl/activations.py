"""Mirrors `numpy_ref.activations`.

Differs:
- gelu and gelu_tanh are written out with `keras.ops`: `keras.ops.gelu` on TensorFlow casts its
  constants through float32 and is off by up to 5e-9 in float64.
- silu is `keras.ops.silu` (`tf.nn.silu`, x sigmoid(beta x)): its one constant, beta = 1.0, also goes
  through float32, but 1.0 is exact there, so it is exact in float64 (the suite holds it to 1e-12).
- softmax is `keras.ops.softmax` (it subtracts the row maximum) after `keras.ops.where(mask, x,
  fill)`; it gives NaN on a fully masked row with fill = -inf, and that row is then set to zeros.
  Keras warns of a softmax over an axis of size 1; a decoder's first step attends to one key, so
  that warning is silenced (that one only).
- Dropout: training mode is Keras's `training` call argument (default False); without a `keep`
  mask (and no `conformance.core.dropout_masks` supplying) one is drawn with `keras.random.uniform` from the layer's `SeedGenerator` (`rng`).
"""
import math
import warnings

import keras
from keras import ops

from conformance.core import checks, dropout_masks, trace
from tf_impl._layer import Layer


def gelu(x):
    return 0.5 * x * (1.0 + ops.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x):
    return ops.maximum(x, 0)


def silu(x):
    return ops.silu(x)


warnings.filterwarnings("ignore", "You are using a softmax over axis -1 of a tensor of shape", UserWarning,
                        r"keras\.src\.ops\.nn")  # one key: the first decoding step, not a mistake
ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "relu": relu, "silu": silu}


def softmax(x, mask=None, fill=-1e9):
    """Stable softmax over the last axis; `mask` True = keep, broadcastable to x."""
    if mask is not None:
        x = ops.where(mask, x, fill)
    probs = ops.softmax(x, axis=-1)
    if mask is not None:  # fully masked rows are defined as zeros
        probs = ops.where(ops.any(mask, axis=-1, keepdims=True), probs, 0)
    return probs


def softcap(x, cap):
    """cap tanh(x / cap): about x for |x| << cap, never past +-cap (Gemma 2's scores and logits)."""
    return cap * ops.tanh(x / cap)

def dropout(x, keep, rate):
    return ops.where(keep, x / (1.0 - rate), 0)


class Activation(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.fn = ACTIVATIONS[cfg.activation]

    def call(self, x):
        checks.floating("x", checks.dtype_name(x))
        return trace.tap_for(self)("output", self.fn(x))


class Softmax(Layer):
    """The masked softmax of attention: scores (B, H, T, S), mask (B, 1 or H, T, S)."""

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.fill = cfg.mask_fill

    def call(self, scores, mask=None):
        checks.floating("scores", checks.dtype_name(scores))
        checks.rank("scores", checks.shape_of(scores), 4, "(B, H, T, S)")
        if mask is not None:
            checks.attention_mask4("mask", checks.spec(mask), checks.shape_of(scores))
        return trace.tap_for(self)("output", softmax(scores, mask, self.fill))


class Dropout(Layer):
    """Identity at inference; in training, drops the units where `keep` is False."""

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.rate = cfg.dropout
        self.rng = keras.random.SeedGenerator()

    def call(self, x, keep=None, training=False):
        if not training or self.rate == 0.0:
            return x
        if keep is None and dropout_masks.active():  # masks shared by all three frameworks
            keep = ops.convert_to_tensor(dropout_masks.keep(self, checks.shape_of(x), self.rate))
        if keep is None:
            keep = keras.random.uniform(ops.shape(x), seed=self.rng) >= self.rate
        checks.shape("keep", checks.shape_of(keep), checks.shape_of(x), "(same as x)")
        return trace.tap_for(self)("output", dropout(x, keep, self.rate))
