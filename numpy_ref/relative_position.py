"""T5's relative position bias (Raffel et al. 2020): a learned scalar per head for each query-key
offset, added to the attention scores. No position enters the embeddings; attention alone knows
where tokens are, and only relative to each other.

Offsets are bucketed, exactly for short distances and logarithmically for long ones, so a fixed
table of `relative_buckets` rows covers any length:

    relative = key position - query position          (negative: the key is earlier)
    bidirectional (encoder): half the buckets for each direction, the upper half for keys after
                             the query; n = |relative|
    causal (decoder):        only earlier keys can be seen; n = max(-relative, 0), a later key
                             shares offset 0's bucket (and is masked anyway)
    max_exact = buckets // 2 (of the buckets per direction)
    bucket = n                                                           if n < max_exact
             max_exact + floor(log(n / max_exact) / log(max_distance / max_exact)
                               * (buckets - max_exact)), at most buckets - 1   otherwise

With 32 buckets and max distance 128 (every T5), the encoder's offsets 0..7 each have their own
bucket a direction, 8..127 share 8 log-spaced ones, and every offset from 128 on shares the
last. The logarithm is taken in float32, as `transformers` and keras-hub compute it: a bucket boundary
falls where float32 puts it (`relative_position_bucket`).

The bias is `table[bucket]`, (1, H, T, S): computed once per stack and added to every layer's
self-attention scores. Each stack (encoder, decoder) has its own table; T5's checkpoints keep it
in the first layer's attention (`relative_attention_bias`), which computes it and passes it up
the stack. Cross-attention has none. With a key/value cache the T new queries sit at positions
past .. past + T - 1 against keys 0 .. past + T - 1.

Costs: a gather, no arithmetic; the add to the scores is attention's (one FLOP a pair). Backward
keeps each pair's bucket and sends the gradient of every pair, summed over the batch and over
the layers that added it, to its bucket's row.
"""
import math

import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import INDEX, Saved
from numpy_ref import autograd
from numpy_ref._module import Module


def relative_position_bucket(relative, bidirectional, num_buckets, max_distance):
    """relative (...) int, key minus query position -> (...) int64 bucket in [0, num_buckets)."""
    relative = relative.astype(np.int64)
    bucket = np.zeros_like(relative)                                            # (...)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0) * num_buckets                          # (...) keys after the query
        n = np.abs(relative)                                                    # (...)
    else:
        n = -np.minimum(relative, 0)                                            # (...) later keys: offset 0
    max_exact = num_buckets // 2
    far = np.maximum(n, max_exact).astype(np.float32)                           # (...) the log's argument
    log = np.log(far / max_exact) / np.float32(math.log(max_distance / max_exact))  # (...) float32, as HF
    large = max_exact + (log * (num_buckets - max_exact)).astype(np.int64)      # (...) truncated: floor
    large = np.minimum(large, num_buckets - 1)                                  # (...)
    return bucket + np.where(n < max_exact, n, large)                           # (...)


def relative_position_bias_backward(grad, buckets, num_buckets):
    """bias[0, h, t, s] = table[bucket[t, s], h]: a gather, so d table[b, h] is the sum of d bias over
    the batch and every pair (t, s) in bucket b. Returns d table (num_buckets, H)."""
    H = grad.shape[1]
    d = grad.sum(axis=0).transpose(1, 2, 0).reshape(-1, H)                      # (T S, H)
    d_table = np.zeros((num_buckets, H), grad.dtype)                            # (num_buckets, H)
    np.add.at(d_table, buckets.reshape(-1), d)
    return d_table


class RelativePositionBias(Module):
    """The bias of one stack: `bidirectional` for an encoder, causal for a decoder."""

    constant_taps = ("buckets",)  # integers of the positions alone

    def __init__(self, cfg, bidirectional=True):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.tiled = cfg.attention_impl == "tiled"  # its layers' tiled attention keeps the bias (saved)
        self.table = self.param("table", cfg.relative_buckets, cfg.num_heads)

    def forward(self, query_positions, key_positions):
        """query_positions (T,), key_positions (S,) ints -> the bias (1, H, T, S)."""
        checks.relative_positions(checks.spec(query_positions), checks.spec(key_positions))
        for arg, positions in (("query_positions", query_positions), ("key_positions", key_positions)):
            if positions.size:
                checks.from_zero(arg, int(positions.min()))
        tap = trace.tap_for(self)
        relative = key_positions[None, :] - query_positions[:, None]          # (T, S)
        buckets = tap("buckets", relative_position_bucket(relative, self.bidirectional, self.num_buckets,
                                                          self.max_distance))  # (T, S)
        bias = self.table[buckets]                                            # (T, S, H)
        return tap("output", bias.transpose(2, 0, 1)[None])                   # (1, H, T, S)

    def flops(self, query_positions, key_positions, **_):
        """A gather: no arithmetic."""
        return iter(())

    def saved(self, f, query_positions, key_positions, **_):
        yield Saved("", "bucket of each (query, key) pair", query_positions[0] * key_positions[0] * INDEX)
        if self.tiled:  # one tensor every layer's TiledAttention recomputes its scores with: counted once, here
            yield Saved("", "position bias (1, H, T, S), for the tiled backward",
                        self.table.shape[1] * query_positions[0] * key_positions[0] * f)

    def backward(self, grad):
        """Positions are integers: nothing to return; the table gets the summed gradient of its buckets."""
        saved = autograd.saved(self)
        grad = saved.tap("output", grad)                                      # (B, H, T, S)
        autograd.accumulate(self, "table", relative_position_bias_backward(grad, saved.taps["buckets"],
                                                                           self.num_buckets))
