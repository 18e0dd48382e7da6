"""Mirrors `numpy_ref.disentangled`.

Differs: the buckets' logarithm is `keras.ops.log` on float32 tensors, as transformers' and
keras-hub's; a gather is `keras.ops.take_along_axis` on an index broadcast to the output's full
shape (B, H, T, S) first (as torch's gather needs; keras would broadcast it itself, through a longer
graph); the scale is a tensor of the scores' dtype (TensorFlow's `tf.cast` of a Python float
rounds it through float32 first). `DisentangledAttention.output` shadows Keras's `Layer.output`,
as in `tf_impl.attention`.
Not here: `gather_scatter` (the gather's backward: TensorFlow's).
"""
import math

from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Shadow
from tf_impl.activations import softmax
from tf_impl.linear import Linear


def log_bucket_position(relative, buckets, max_position):
    """Distances past buckets / 2 in log-spaced buckets, in float32 as transformers' make_log_bucket_position."""
    mid = buckets // 2
    sign = ops.sign(relative)                                                    # (T, S)
    inside = ops.logical_and(relative < mid, relative > -mid)
    magnitude = ops.cast(ops.where(inside, mid - 1, ops.abs(relative)), "float32")
    scale = ops.log(ops.full_like(magnitude, (max_position - 1) / mid))       # (T, S): see numpy_ref
    log_position = ops.ceil(ops.log(magnitude / mid) / scale * (mid - 1)) + mid
    return ops.where(magnitude <= mid, relative, ops.cast(log_position, relative.dtype) * sign)  # (T, S)


def relative_index(T, S, cfg):
    """d(i, j): the row of the relative table for query i and key j, (T, S) int."""
    span = cfg.relative_span
    relative = ops.arange(T)[:, None] - ops.arange(S)[None, :]                  # (T, S)
    if cfg.position_buckets:
        relative = log_bucket_position(relative, cfg.position_buckets, cfg.max_relative_positions or cfg.max_positions)
    return ops.clip(relative + span, 0, 2 * span - 1)                           # (T, S)


def query_key_mask(mask):
    """(B, T) padding -> (B, 1, T, T): query i and key j both real (DeBERTa masks padded queries too)."""
    m = ops.cast(mask, "bool")
    return ops.logical_and(m[:, None, :, None], m[:, None, None, :])            # (B, 1, T, T)


class DisentangledAttention(Layer):
    """DeBERTa-v3's self-attention: x (B, T, D), the model's relative table rel (2k, D), mask (B, T)."""

    output = Shadow()  # Keras's `Layer.output` property: here the output projection

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.terms = cfg.relative_attention
        D, policy = cfg.d_model, self.dtype_policy
        self.scale = cfg.attention_scale or 1.0 / math.sqrt(cfg.head_dim * (1 + len(self.terms)))
        self.query = Linear(D, D, name="query", dtype=policy)
        self.key = Linear(D, D, name="key", dtype=policy)
        self.value = Linear(D, D, name="value", dtype=policy)
        self.output = Linear(D, D, name="output", dtype=policy)
        self._saved_output = self.output  # Keras's save_weights skips names that Layer defines

    def split_heads(self, x):
        B, T, D = ops.shape(x)  # ints, or tensors for dynamic axes under tf.function (D is static)
        Dh = self.cfg.head_dim
        return ops.transpose(ops.reshape(x, (B, T, D // Dh, Dh)), (0, 2, 1, 3))  # (B, H, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = ops.shape(x)
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (B, T, H * Dh))  # (B, T, D)

    def call(self, x, rel, mask=None):
        """x: (B, T, D)  rel: (2k, D), already layer-normed by the model  mask: (B, T), True = attend."""
        checks.disentangled_inputs(checks.spec(x), checks.spec(rel), checks.spec(mask), self.cfg.d_model,
                                   2 * self.cfg.relative_span)
        tap = trace.tap_for(self)
        q = tap("q", self.split_heads(self.query(x)))        # (B, H, T, Dh)
        k = tap("k", self.split_heads(self.key(x)))          # (B, H, S, Dh)
        v = tap("v", self.split_heads(self.value(x)))        # (B, H, S, Dh)
        index = relative_index(ops.shape(q)[2], ops.shape(k)[2], self.cfg)[None, None]  # (1, 1, T, S)
        scores = ops.matmul(q, ops.swapaxes(k, -1, -2))                          # (B, H, T, S)
        full = ops.shape(scores)
        if "c2p" in self.terms:
            pk = tap("position_key", self.split_heads(self.key(rel[None])))      # (1, H, 2k, Dh)
            by_distance = ops.matmul(q, ops.swapaxes(pk, -1, -2))                # (B, H, T, 2k)
            gathered = ops.take_along_axis(by_distance, ops.broadcast_to(index, full), axis=-1)
            scores = scores + tap("c2p", gathered)                               # (B, H, T, S)
        if "p2c" in self.terms:
            pq = tap("position_query", self.split_heads(self.query(rel[None])))  # (1, H, 2k, Dh)
            by_distance = ops.matmul(k, ops.swapaxes(pq, -1, -2))                # (B, H, S, 2k)
            by_key = ops.take_along_axis(by_distance, ops.broadcast_to(ops.swapaxes(index, -1, -2), full),
                                         axis=-1)                                # (B, H, S, T)
            scores = scores + tap("p2c", ops.swapaxes(by_key, -1, -2))           # (B, H, T, S)
        scores = tap("scores", scores * ops.convert_to_tensor(self.scale, dtype=scores.dtype))  # (B, H, T, S)
        m = None if mask is None else query_key_mask(mask)                       # (B, 1, T, S)
        probs = tap("probs", softmax(scores, m, self.cfg.mask_fill))             # (B, H, T, S)
        context = tap("context", ops.matmul(probs, v))                           # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context)))             # (B, T, D)
