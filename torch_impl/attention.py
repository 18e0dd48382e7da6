"""Mirrors `numpy_ref.attention`.

Differs: `causal_mask` and `attention_mask` take a `device` for the masks they build;
a padding mask becomes bool with `.bool()`; heads are split with `reshape` + `permute`
and keys / values are cached with `torch.cat`. `fused_attention` is one
`F.scaled_dot_product_attention` call; autograd, not a hand-written backward, differentiates it.
Own lines: `fused_attention` (the library call).
"""
import torch
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import softmax
from torch_impl.linear import Linear


def causal_mask(T, S, device=None):
    """(T, S) bool: query i (at position S - T + i) sees keys 0 .. S - T + i."""
    return torch.arange(S, device=device)[None, :] <= torch.arange(T, device=device)[:, None] + (S - T)


def attention_mask(padding_mask, T, S, causal, device=None):
    """Combine a (B, S) padding mask and the causal rule into a (B, 1, T, S) mask, or None."""
    mask = None
    if padding_mask is not None:
        mask = padding_mask.bool()[:, None, None, :]                            # (B, 1, 1, S)
    if causal:
        tri = causal_mask(T, S, device)[None, None]                             # (1, 1, T, S)
        mask = tri if mask is None else mask & tri                              # (B, 1, T, S)
    return mask


def scaled_dot_product_attention(q, k, v, mask, cfg, tap):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask: (B, 1, T, S) or None."""
    scores = tap("scores", q @ k.transpose(-1, -2) * cfg.scale)   # (B, H, T, S)
    probs = tap("probs", softmax(scores, mask, cfg.mask_fill))     # (B, H, T, S)
    return tap("context", probs @ v)                                # (B, H, T, Dh)


def fused_attention(q, k, v, mask, cfg):
    """The same attention as one `F.scaled_dot_product_attention` call (boolean mask, True = attend).

    Inside the kernel masked scores are -inf, not `cfg.mask_fill`: the same probabilities for
    any fill far below the scores, except a fully masked row, set to zeros here as in `softmax`.
    """
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=cfg.scale)  # (B, H, T, Dh)
    if mask is not None:
        context = torch.where(mask.any(dim=-1, keepdim=True), context, 0)             # (B, H, T, Dh)
    return context


def attention(q, k, v, mask, cfg, tap):
    """The attention `cfg.attention_impl` names: the reference's traced lines, or one fused call."""
    if cfg.attention_impl == "fused":
        return tap("context", fused_attention(q, k, v, mask, cfg))                # (B, H, T, Dh)
    return scaled_dot_product_attention(q, k, v, mask, cfg, tap)                 # (B, H, T, Dh)


class ScaledDotProductAttention(nn.Module):
    """The bare attention function as a component: q, k, v already split into heads."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, q, k, v, mask=None):
        checks.sdpa_inputs(checks.spec(q), checks.spec(k), checks.spec(v), checks.spec(mask))
        if self.cfg.causal:
            tri = causal_mask(q.shape[2], k.shape[2], q.device)[None, None]      # (1, 1, T, S)
            mask = tri if mask is None else mask & tri
        return attention(q, k, v, mask, self.cfg, trace.tap_for(self))


class MultiHeadAttention(nn.Module):
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
        return x.reshape(B, T, self.cfg.num_heads, self.cfg.head_dim).permute(0, 2, 1, 3)  # (B, H, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = x.shape
        return x.permute(0, 2, 1, 3).reshape(B, T, H * Dh)  # (B, T, D)

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
                k = torch.cat([cache["key"], k], dim=2)  # (B, H, S, Dh)
                v = torch.cat([cache["value"], v], dim=2)
            cache["key"], cache["value"] = k, v
        T, S = q.shape[2], k.shape[2]
        m = attention_mask(mask, T, S, self.causal, x.device)     # (B, 1, T, S)
        context_heads = attention(q, k, v, m, self.cfg, tap)                    # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context_heads)))       # (B, T, D)
