"""Mirrors `numpy_ref.relative_position`.

Differs: the table is a Keras weight (`add_weight`, name `table`), looked up with `keras.ops.take`;
the bucket arithmetic is `keras.ops` (`ops.cast` to int truncates as NumPy's `astype`), its
logarithm in float32 whatever the model's dtype, as transformers and keras-hub compute it.
"""
import math

from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, is_symbolic


def relative_position_bucket(relative, bidirectional, num_buckets, max_distance):
    """relative (...) int, key minus query position -> (...) int64 bucket in [0, num_buckets)."""
    relative = ops.cast(relative, "int64")
    bucket = ops.zeros_like(relative)                                           # (...)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + ops.cast(relative > 0, "int64") * num_buckets         # (...) keys after the query
        n = ops.abs(relative)                                                   # (...)
    else:
        n = -ops.minimum(relative, 0)                                           # (...) later keys: offset 0
    max_exact = num_buckets // 2
    far = ops.cast(ops.maximum(n, max_exact), "float32")                        # (...) the log's argument
    log = ops.log(far / max_exact) / math.log(max_distance / max_exact)         # (...) float32, as HF
    large = max_exact + ops.cast(log * (num_buckets - max_exact), "int64")      # (...) truncated: floor
    large = ops.minimum(large, num_buckets - 1)                                 # (...)
    return bucket + ops.where(n < max_exact, n, large)                          # (...)


class RelativePositionBias(Layer):
    """The bias of one stack: `bidirectional` for an encoder, causal for a decoder."""

    def __init__(self, cfg, bidirectional=True, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.autocast = False  # positions are integers, never cast
        self.table = self.add_weight(shape=(cfg.relative_buckets, cfg.num_heads), name="table")

    def call(self, query_positions, key_positions):
        """query_positions (T,), key_positions (S,) ints -> the bias (1, H, T, S)."""
        checks.relative_positions(checks.spec(query_positions), checks.spec(key_positions))
        for arg, positions in (("query_positions", query_positions), ("key_positions", key_positions)):
            if not is_symbolic(positions) and ops.size(positions):  # a traced position has no value
                checks.from_zero(arg, int(ops.min(positions)))
        tap = trace.tap_for(self)
        relative = key_positions[None, :] - query_positions[:, None]          # (T, S)
        buckets = tap("buckets", relative_position_bucket(relative, self.bidirectional, self.num_buckets,
                                                          self.max_distance))  # (T, S)
        bias = ops.take(self.table, buckets, axis=0)                          # (T, S, H)
        return tap("output", ops.transpose(bias, (2, 0, 1))[None])            # (1, H, T, S)

