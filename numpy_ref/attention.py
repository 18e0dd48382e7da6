"""Scaled dot-product attention and multi-head attention.

Shape legend: B batch, T query positions, S key positions, D model width, H heads,
Dh = D / H head width.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(Dh) + mask) V

Why 1/sqrt(Dh): for q, k with independent unit-variance entries, q . k is a sum of Dh
terms with variance Dh; dividing by sqrt(Dh) brings the scores back to unit variance,
so the softmax neither saturates to one-hot (vanishing gradients) nor flattens.

Masks are boolean, True = attend, shaped (B, 1, T, S) so one mask serves every head.
A padding mask (B, S) hides keys; the causal mask hides key j from query i when j is
later than i. With a key/value cache the T queries are the *last* T of S positions,
so query i sits at absolute position S - T + i. Both combine by logical AND.

Multi-head attention projects x to H independent (T, Dh) slices, attends in each, and
concatenates the H results back to D before the output projection: the same FLOPs as
one D-wide attention, but H different attention patterns.
"""
import numpy as np

from conformance import checks, trace
from numpy_ref._module import Module
from numpy_ref.activations import softmax
from numpy_ref.linear import Linear


def causal_mask(T, S):
    """(T, S) bool: query i (at position S - T + i) sees keys 0 .. S - T + i."""
    return np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)


def attention_mask(padding_mask, T, S, causal):
    """Combine a (B, S) padding mask and the causal rule into a (B, 1, T, S) mask, or None."""
    mask = None
    if padding_mask is not None:
        mask = padding_mask.astype(bool)[:, None, None, :]                      # (B, 1, 1, S)
    if causal:
        tri = causal_mask(T, S)[None, None]                                     # (1, 1, T, S)
        mask = tri if mask is None else mask & tri                              # (B, 1, T, S)
    return mask


def scaled_dot_product_attention(q, k, v, mask, cfg, tap):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask: (B, 1, T, S) or None."""
    scores = tap("scores", q @ k.swapaxes(-1, -2) * cfg.scale)   # (B, H, T, S)
    probs = tap("probs", softmax(scores, mask, cfg.mask_fill))    # (B, H, T, S)
    return tap("context", probs @ v)                               # (B, H, T, Dh)


class ScaledDotProductAttention(Module):
    """The bare attention function as a component: q, k, v already split into heads."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, q, k, v, mask=None):
        checks.sdpa_inputs(checks.spec(q), checks.spec(k), checks.spec(v), checks.spec(mask))
        if self.cfg.causal:
            tri = causal_mask(q.shape[2], k.shape[2])[None, None]                # (1, 1, T, S)
            mask = tri if mask is None else mask & tri
        return scaled_dot_product_attention(q, k, v, mask, self.cfg, trace.tap_for(self))


class MultiHeadAttention(Module):
    """Self-attention (context=None) or cross-attention over `context`."""

    def __init__(self, cfg, causal=None):
        super().__init__()
        self.cfg = cfg
        self.causal = cfg.causal if causal is None else causal
        self.query = Linear(cfg.d_model, cfg.d_model, cfg.use_bias)
        self.key = Linear(cfg.d_model, cfg.d_model, cfg.use_bias)
        self.value = Linear(cfg.d_model, cfg.d_model, cfg.use_bias)
        self.output = Linear(cfg.d_model, cfg.d_model, cfg.use_bias)

    def split_heads(self, x):
        B, T, _ = x.shape
        return x.reshape(B, T, self.cfg.num_heads, self.cfg.head_dim).transpose(0, 2, 1, 3)  # (B, H, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)  # (B, T, D)

    def forward(self, x, context=None, mask=None, cache=None):
        """x: (B, T, D)  context: (B, S, D) or None  mask: (B, S) padding, True = attend.

        `cache`, a dict, holds the keys and values of earlier positions: new ones are
        appended, and the T queries attend to all S = past + T of them.
        """
        past = cache["key"].shape[2] if cache and "key" in cache else 0
        checks.attention_inputs(checks.spec(x), checks.spec(context), checks.spec(mask), past,
                                self.cfg.d_model)
        tap = trace.tap_for(self)
        source = x if context is None else context
        q = tap("q", self.split_heads(self.query(x)))        # (B, H, T, Dh)
        k = tap("k", self.split_heads(self.key(source)))     # (B, H, S, Dh)
        v = tap("v", self.split_heads(self.value(source)))   # (B, H, S, Dh)
        if cache is not None:
            if "key" in cache:
                k = np.concatenate([cache["key"], k], axis=2)  # (B, H, S, Dh)
                v = np.concatenate([cache["value"], v], axis=2)
            cache["key"], cache["value"] = k, v
        T, S = q.shape[2], k.shape[2]
        m = attention_mask(mask, T, S, self.causal)               # (B, 1, T, S)
        context_heads = scaled_dot_product_attention(q, k, v, m, self.cfg, tap)  # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context_heads)))       # (B, T, D)

