"""Mirrors `numpy_ref.linear_attention`.

Differs: elu is `F.elu`; the stabilising maxima are `torch.amax` of the detached exponent (NumPy's
backward holds them constant; detached before the max, no autograd node keeps the exponent for it);
`random_features` is an `nn.Parameter` under its canonical name (loaded, never drawn
here: `torch.empty`).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace


def key_mask(mask):
    """A (B, S) padding mask as (B, 1, S, 1), True = attend: the keys whose features are kept."""
    return mask.bool()[:, None, :, None]                                        # (B, 1, S, 1)


def elu_feature_map(x):
    """phi(x) = elu(x) + 1: x + 1 above 0, exp(x) below; positive everywhere."""
    return F.elu(x) + 1                                                         # (B, H, T, M)


def random_feature_map(x, features, scale, axes):
    """FAVOR+'s phi(x) = exp(x W - |x|^2 / 2 - max) / sqrt(M), x = x sqrt(scale); the max over `axes`."""
    x = x * math.sqrt(scale)                                                    # (B, H, T, Dh)
    exponent = x @ features - (x * x).sum(dim=-1, keepdim=True) / 2               # (B, H, T, M)
    shift = torch.amax(exponent.detach(), dim=axes, keepdim=True)                 # (B, H, T or 1, 1)
    return torch.exp(exponent - shift) / math.sqrt(features.shape[-1])            # (B, H, T, M)


def prefix_sums(x, T, offset):
    """Sums over key positions up to each of T queries: cumsum over S, then the T rows from `offset`."""
    return torch.cumsum(x, dim=2)[:, :, offset:offset + T]                      # (B, H, T, ...)


def nonzero(denominator):
    """The denominator, 1 where it is 0 (a query with no key: its numerator is 0, its output 0)."""
    return torch.where(denominator > 0, denominator, 1)                        # (B, H, T, 1)


def linear_attention(query_features, key_features, v, tap):
    """phi(Q) (phi(K)^T V) / phi(Q) sum_j phi(K_j): every query reads the same kv and z."""
    kv = tap("kv", key_features.transpose(-1, -2) @ v)                          # (B, H, M, Dh)
    z = tap("normalizer", key_features.sum(dim=2)[..., None])                   # (B, H, M, 1)
    numerator = tap("numerator", query_features @ kv)                           # (B, H, T, Dh)
    denominator = tap("denominator", query_features @ z)                        # (B, H, T, 1)
    return tap("context", numerator / nonzero(denominator))                    # (B, H, T, Dh)


def causal_linear_attention(query_features, key_features, v, offset, tap):
    """Query i reads the prefix sums of kv and z up to its key position, offset + i."""
    T = query_features.shape[2]
    kv = tap("kv", prefix_sums(key_features[..., :, None] * v[..., None, :], T, offset))  # (B, H, T, M, Dh)
    z = tap("normalizer", prefix_sums(key_features, T, offset)[..., None])     # (B, H, T, M, 1)
    numerator = tap("numerator", (query_features[..., None, :] @ kv)[..., 0, :])  # (B, H, T, Dh)
    denominator = tap("denominator", (query_features[..., None, :] @ z)[..., 0, :])  # (B, H, T, 1)
    return tap("context", numerator / nonzero(denominator))                    # (B, H, T, Dh)


def causal_offset(cfg, T, S):
    """The key position of query 0: S - T ("bottom_right") or 0 ("top_left")."""
    return S - T if cfg.causal_alignment == "bottom_right" else 0


class _FeatureAttention(nn.Module):
    """What both components share: the checks, the mask, the two attentions."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def attend(self, query_features, key_features, v, tap):
        T, S = query_features.shape[2], key_features.shape[2]
        if self.cfg.causal:
            return causal_linear_attention(query_features, key_features, v, causal_offset(self.cfg, T, S), tap)
        return linear_attention(query_features, key_features, v, tap)          # (B, H, T, Dh)

    def check(self, q, k, v, mask):
        checks.linear_attention_inputs(checks.spec(q), checks.spec(k), checks.spec(v), checks.spec(mask),
                                       self.cfg.causal)

    def features(self):
        return self.cfg.head_dim


class LinearAttention(_FeatureAttention):
    """Katharopoulos et al.'s linear attention, phi = elu + 1: q, k, v already split into heads."""

    def forward(self, q, k, v, mask=None):
        self.check(q, k, v, mask)
        tap = trace.tap_for(self)
        query_features = tap("query_features", elu_feature_map(q))             # (B, H, T, Dh)
        key_features = elu_feature_map(k)                                       # (B, H, S, Dh)
        if mask is not None:
            key_features = torch.where(key_mask(mask), key_features, 0)           # (B, H, S, Dh)
        key_features = tap("key_features", key_features)                        # (B, H, S, Dh)
        return self.attend(query_features, key_features, v, tap)                # (B, H, T, Dh)


class PerformerAttention(_FeatureAttention):
    """Performer's FAVOR+ softmax estimate, M = `cfg.performer_features` random features `random_features` (Dh, M)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.random_features = nn.Parameter(torch.empty(cfg.head_dim, cfg.performer_features))

    def features(self):
        return self.cfg.performer_features

    def forward(self, q, k, v, mask=None):
        self.check(q, k, v, mask)
        tap = trace.tap_for(self)
        scale, w = self.cfg.scale, self.random_features
        query_features = tap("query_features", random_feature_map(q, w, scale, -1))  # (B, H, T, M)
        key_features = random_feature_map(k, w, scale, (2, 3))                 # (B, H, S, M)
        if mask is not None:
            key_features = torch.where(key_mask(mask), key_features, 0)           # (B, H, S, M)
        key_features = tap("key_features", key_features)                        # (B, H, S, M)
        return self.attend(query_features, key_features, v, tap)                # (B, H, T, Dh)
