"""Mirrors `numpy_ref.disentangled`.

Differs: the buckets' logarithm is `torch.log` on float32 tensors (transformers' own lines); a
gather is `torch.gather`, which takes an index of the output's full shape, so the (T, S) table is
expanded to (B, H, T, S) first; heads are split with `reshape` + `permute`; autograd, not a
hand-written backward, differentiates it.
Not here: `gather_scatter` (the gather's backward: autograd's).
"""
import math

import torch
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import softmax
from torch_impl.linear import Linear


def log_bucket_position(relative, buckets, max_position):
    """Distances past buckets / 2 in log-spaced buckets, in float32 as transformers' make_log_bucket_position."""
    mid = buckets // 2
    sign = torch.sign(relative)                                                  # (T, S)
    magnitude = torch.where((relative < mid) & (relative > -mid), mid - 1, relative.abs()).to(torch.float32)
    scale = torch.log(torch.full_like(magnitude, (max_position - 1) / mid))   # (T, S): see numpy_ref
    log_position = torch.ceil(torch.log(magnitude / mid) / scale * (mid - 1)) + mid
    return torch.where(magnitude <= mid, relative, (log_position * sign).to(relative.dtype))  # (T, S)


def relative_index(T, S, cfg, device=None):
    """d(i, j): the row of the relative table for query i and key j, (T, S) int."""
    span = cfg.relative_span
    relative = torch.arange(T, device=device)[:, None] - torch.arange(S, device=device)[None, :]  # (T, S)
    if cfg.position_buckets:
        relative = log_bucket_position(relative, cfg.position_buckets, cfg.max_relative_positions or cfg.max_positions)
    return torch.clamp(relative + span, 0, 2 * span - 1)                        # (T, S)


def query_key_mask(mask):
    """(B, T) padding -> (B, 1, T, T): query i and key j both real (DeBERTa masks padded queries too)."""
    m = mask.bool()
    return m[:, None, :, None] & m[:, None, None, :]                            # (B, 1, T, T)


class DisentangledAttention(nn.Module):
    """DeBERTa-v3's self-attention: x (B, T, D), the model's relative table rel (2k, D), mask (B, T)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.terms = cfg.relative_attention
        D = cfg.d_model
        self.scale = cfg.attention_scale or 1.0 / math.sqrt(cfg.head_dim * (1 + len(self.terms)))
        self.query = Linear(D, D)
        self.key = Linear(D, D)
        self.value = Linear(D, D)
        self.output = Linear(D, D)

    def split_heads(self, x):
        B, T, D = x.shape
        Dh = self.cfg.head_dim
        return x.reshape(B, T, D // Dh, Dh).permute(0, 2, 1, 3)  # (B, H, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = x.shape
        return x.permute(0, 2, 1, 3).reshape(B, T, H * Dh)  # (B, T, D)

    def forward(self, x, rel, mask=None):
        """x: (B, T, D)  rel: (2k, D), already layer-normed by the model  mask: (B, T), True = attend."""
        checks.disentangled_inputs(checks.spec(x), checks.spec(rel), checks.spec(mask), self.cfg.d_model,
                                   2 * self.cfg.relative_span)
        tap = trace.tap_for(self)
        q = tap("q", self.split_heads(self.query(x)))        # (B, H, T, Dh)
        k = tap("k", self.split_heads(self.key(x)))          # (B, H, S, Dh)
        v = tap("v", self.split_heads(self.value(x)))        # (B, H, S, Dh)
        index = relative_index(q.shape[2], k.shape[2], self.cfg, x.device)[None, None]  # (1, 1, T, S)
        scores = q @ k.transpose(-1, -2)                                         # (B, H, T, S)
        if "c2p" in self.terms:
            pk = tap("position_key", self.split_heads(self.key(rel[None])))      # (1, H, 2k, Dh)
            by_distance = q @ pk.transpose(-1, -2)                               # (B, H, T, 2k)
            scores = scores + tap("c2p", torch.gather(by_distance, -1, index.expand_as(scores)))  # (B, H, T, S)
        if "p2c" in self.terms:
            pq = tap("position_query", self.split_heads(self.query(rel[None])))  # (1, H, 2k, Dh)
            by_distance = k @ pq.transpose(-1, -2)                               # (B, H, S, 2k)
            by_key = torch.gather(by_distance, -1, index.transpose(-1, -2).expand_as(scores))  # (B, H, S, T)
            scores = scores + tap("p2c", by_key.transpose(-1, -2))               # (B, H, T, S)
        scores = tap("scores", scores * self.scale)                              # (B, H, T, S)
        m = None if mask is None else query_key_mask(mask)                       # (B, 1, T, S)
        probs = tap("probs", softmax(scores, m, self.cfg.mask_fill))             # (B, H, T, S)
        context = tap("context", probs @ v)                                      # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context)))             # (B, T, D)
