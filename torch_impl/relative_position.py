"""Mirrors `numpy_ref.relative_position`.

Differs: the table is an `nn.Parameter` (canonical name `table`); the bucket arithmetic is torch's
(`clamp` for the minimum and maximum, `.long()` truncates as NumPy's `astype`), its logarithm in
`torch.float32` whatever the model's dtype, as transformers computes it.
"""
import math

import torch
from torch import nn

from conformance.core import checks, trace


def relative_position_bucket(relative, bidirectional, num_buckets, max_distance):
    """relative (...) int, key minus query position -> (...) int64 bucket in [0, num_buckets)."""
    relative = relative.long()
    bucket = torch.zeros_like(relative)                                         # (...)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets                   # (...) keys after the query
        n = relative.abs()                                                      # (...)
    else:
        n = -torch.clamp(relative, max=0)                                       # (...) later keys: offset 0
    max_exact = num_buckets // 2
    far = torch.clamp(n, min=max_exact).float()                                 # (...) the log's argument
    log = torch.log(far / max_exact) / math.log(max_distance / max_exact)       # (...) float32, as HF
    large = max_exact + (log * (num_buckets - max_exact)).long()                # (...) truncated: floor
    large = torch.clamp(large, max=num_buckets - 1)                             # (...)
    return bucket + torch.where(n < max_exact, n, large)                        # (...)


class RelativePositionBias(nn.Module):
    """The bias of one stack: `bidirectional` for an encoder, causal for a decoder."""

    def __init__(self, cfg, bidirectional=True):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.table = nn.Parameter(torch.empty(cfg.relative_buckets, cfg.num_heads))

    def forward(self, query_positions, key_positions):
        """query_positions (T,), key_positions (S,) ints -> the bias (1, H, T, S)."""
        checks.relative_positions(checks.spec(query_positions), checks.spec(key_positions))
        for arg, positions in (("query_positions", query_positions), ("key_positions", key_positions)):
            if positions.numel() and not torch.compiler.is_exporting():  # a traced position has no value
                checks.from_zero(arg, int(positions.min()))
        tap = trace.tap_for(self)
        relative = key_positions[None, :] - query_positions[:, None]          # (T, S)
        buckets = tap("buckets", relative_position_bucket(relative, self.bidirectional, self.num_buckets,
                                                          self.max_distance))  # (T, S)
        bias = self.table[buckets]                                            # (T, S, H)
        return tap("output", bias.permute(2, 0, 1)[None])                     # (1, H, T, S)
