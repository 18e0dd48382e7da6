"""Mirrors `numpy_ref.vit`.

Differs: `ViT` is a `keras.Model` whose `layers` attribute shadows Keras's `Model.layers` property
to keep the canonical names `layers.0...` (as `GPT2`); the [CLS] row and the position table are
Keras weights made in `__init__`; the resize matrices are computed in float64 with `keras.ops` and
cast to the table's dtype. Not `keras.ops.image.resize(interpolation="bicubic")`: on TensorFlow it
is `tf.image.resize`, Keys' a = -0.5 with renormalized edges, up to 0.26 away from transformers' resize
(`conformance/suites/test_vit.py` measures it). The batch size of the [CLS] broadcast is read with
`keras.ops.shape`, a tensor while traced.
"""
import math

from keras import ops
from keras.initializers import RandomNormal

from conformance.core import checks, trace
from tf_impl._layer import Layer, Model, Shadow
from tf_impl.activations import Dropout
from tf_impl.blocks import EncoderLayer
from tf_impl.linear import Linear
from tf_impl.normalization import LayerNorm
from tf_impl.patch_embedding import PatchEmbedding


def cubic_weights(t, a):
    """(n,) offsets t in [0, 1) past the left neighbour -> (n, 4): Keys' kernel W at distances 1 + t, t,
    1 - t and 2 - t, the weights of the taps at -1, 0, 1 and 2."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return ops.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)  # (n, 4)


def bicubic_matrix(n_in, n_out, a=-0.75, edges="clamp"):
    """(n_out, n_in): a 1-D bicubic resize from n_in samples to n_out as a matrix, half-pixel centres."""
    source = (ops.arange(n_out, dtype="float64") + 0.5) * (n_in / n_out) - 0.5  # (n_out,)
    left = ops.floor(source)                                                   # (n_out,)
    weights = cubic_weights(source - left, a)                                  # (n_out, 4)
    taps = ops.cast(left, "int64")[:, None] + ops.arange(-1, 3, dtype="int64")  # (n_out, 4)
    if edges == "drop":
        weights = ops.where((taps >= 0) & (taps < n_in), weights, 0.0)        # (n_out, 4)
        weights = weights / ops.sum(weights, axis=-1, keepdims=True)          # (n_out, 4)
    reads = ops.clip(taps, 0, n_in - 1)[..., None] == ops.arange(n_in, dtype="int64")  # (n_out, 4, n_in)
    return ops.sum(weights[..., None] * ops.cast(reads, "float64"), axis=1)   # (n_out, n_in)


def bicubic_resize(grid, h, w, a=-0.75, edges="clamp"):
    """grid (n, m, D) -> (h, w, D): the rows resized, then the columns (separable)."""
    n, m, D = grid.shape
    rows = ops.cast(bicubic_matrix(n, h, a, edges), grid.dtype)                # (h, n)
    cols = ops.cast(bicubic_matrix(m, w, a, edges), grid.dtype)                # (w, m)
    x = ops.reshape(ops.matmul(rows, ops.reshape(grid, (n, m * D))), (h, m, D))  # (h, m, D)
    return ops.matmul(cols, x)                                                 # (h, w, D)


def interpolate_positions(table, h, w):
    """(1 + n n, D) -> (1 + h w, D): [CLS]'s row kept, the n x n grid of patch positions resized to h x w."""
    n = math.isqrt(table.shape[0] - 1)
    grid = ops.reshape(table[1:], (n, n, -1))                                  # (n, n, D)
    grid = bicubic_resize(grid, h, w)                                          # (h, w, D)
    return ops.concatenate([table[:1], ops.reshape(grid, (h * w, -1))], axis=0)  # (1 + h w, D)


class ViTEmbeddings(Layer):
    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.patch_size, self.interpolate = cfg.patch_size, cfg.interpolate_pos_encoding
        grid = cfg.image_size // cfg.patch_size
        self.patch = PatchEmbedding(cfg, name="patch", dtype=self.dtype_policy)
        self.cls_token = self.add_weight(shape=(1, cfg.d_model), name="cls_token",
                                         initializer=RandomNormal(stddev=0.02))
        self.positions = self.add_weight(shape=(1 + grid * grid, cfg.d_model), name="positions",
                                         initializer=RandomNormal(stddev=0.02))
        self.dropout = Dropout(cfg, name="dropout", dtype=self.dtype_policy)

    def call(self, pixel_values):
        """pixel_values: (B, C, H, W) -> (B, 1 + N, D): [CLS] and the patches, positions added."""
        tap = trace.tap_for(self)
        x = self.patch(pixel_values)                                           # (B, N, D)
        B, D = ops.shape(x)[0], x.shape[-1]
        cls = ops.broadcast_to(self.cls_token, (B, 1, D))                      # (B, 1, D)
        x = ops.concatenate([cls, x], axis=1)                                  # (B, 1 + N, D)
        positions = self.positions                                             # (1 + N, D)
        if self.interpolate:
            P = self.patch_size
            H, W = pixel_values.shape[2:]
            positions = tap("positions", interpolate_positions(positions, H // P, W // P))  # (1 + N, D)
        return tap("output", self.dropout(x + positions))                      # (B, 1 + N, D)


class ViT(Model):
    layers = Shadow()  # Keras's `Model.layers` property: here the list of blocks

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        dtype = self.dtype_policy
        self.embeddings = ViTEmbeddings(cfg, name="embeddings", dtype=dtype)
        self.layers = [EncoderLayer(cfg, name=f"layers.{i}", dtype=dtype) for i in range(cfg.num_layers)]
        self.final_norm = LayerNorm(cfg, name="final_norm", dtype=dtype)
        self.pooler = (Linear(cfg.d_model, cfg.d_model, name="pooler", dtype=dtype)
                       if cfg.head == "none" and cfg.pooler else None)
        self.classifier = (Linear(cfg.d_model, cfg.num_labels, name="classifier", dtype=dtype)
                           if cfg.head == "classification" else None)

    def call(self, pixel_values):
        """pixel_values: (B, C, H, W), channels first, floating."""
        cfg = self.cfg
        checks.pixel_values(checks.spec(pixel_values), cfg.num_channels, cfg.patch_size, cfg.interpolate_pos_encoding)
        checks.image_size(checks.spec(pixel_values), cfg.image_size, cfg.patch_size, cfg.interpolate_pos_encoding)
        tap = trace.tap_for(self)
        h = self.embeddings(pixel_values)                                      # (B, 1 + N, D)
        for layer in self.layers:
            h = layer(h)                                                       # (B, 1 + N, D)
        h = self.final_norm(h)                                                 # (B, 1 + N, D)
        out = {"last_hidden_state": h}
        if self.pooler is not None:
            out["pooled_output"] = tap("pooled", ops.tanh(self.pooler(h[:, 0])))  # (B, D)
        if self.classifier is not None:
            out["logits"] = tap("logits", self.classifier(h[:, 0]))           # (B, num_labels)
        return out
