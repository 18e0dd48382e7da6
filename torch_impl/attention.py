"""Mirrors `numpy_ref.attention`.

Differs: `causal_mask`, `window_mask` and `attention_mask` take a `device` for the masks they build;
a padding mask becomes bool with `.bool()`; heads are split with `reshape` + `permute` and
merged through an explicit contiguous copy; keys / values are cached with `torch.cat`. `fused_attention` is one
`F.scaled_dot_product_attention` call; autograd, not a hand-written backward, differentiates it.
"tiled" is `torch_impl.tiled_attention` (an autograd.Function with the blockwise backward).
Own lines: `fused_attention` (the library call).
"""
import torch
import torch.nn.functional as F
from torch import nn

from conformance.core import checks, trace
from torch_impl.activations import softcap, softmax
from torch_impl.linear import Linear
from torch_impl.normalization import RMSNorm
from torch_impl.rotary import RotaryEmbedding
from torch_impl.tiled_attention import tiled_context


def causal_mask(T, S, alignment="bottom_right", device=None):
    """(T, S) bool: query i (at position S - T + i, or i when "top_left") sees keys up to its own."""
    offset = S - T if alignment == "bottom_right" else 0
    return torch.arange(S, device=device)[None, :] <= torch.arange(T, device=device)[:, None] + offset


def window_mask(T, S, window, right=0, alignment="bottom_right", device=None):
    """(T, S) bool: query i (placed as in `causal_mask`) sees keys i - window < j <= i + right."""
    i = torch.arange(T, device=device)[:, None] + (S - T if alignment == "bottom_right" else 0)
    j = torch.arange(S, device=device)[None, :]
    return (j > i - window) & (j <= i + right)


def attention_mask(padding_mask, T, S, causal, window=None, right=0, alignment="bottom_right", device=None):
    """Combine a (B, S) padding mask, the causal rule and a window into a (B, 1, T, S) mask, or None."""
    mask = None
    if padding_mask is not None:
        mask = padding_mask.bool()[:, None, None, :]                            # (B, 1, 1, S)
    rules = ([causal_mask(T, S, alignment, device)] if causal else []) + \
        ([window_mask(T, S, window, right, alignment, device)] if window is not None else [])
    for rule in rules:
        rule = rule[None, None]                                                 # (1, 1, T, S)
        mask = rule if mask is None else mask & rule                            # (B, 1, T, S)
    return mask


def repeat_kv(x, groups):
    """(B, KV, S, Dh) -> (B, KV G, S, Dh): key/value head g serves query heads g G .. g G + G - 1."""
    return x if groups == 1 else torch.repeat_interleave(x, groups, dim=1)


def scaled_dot_product_attention(q, k, v, mask, cfg, tap, bias=None):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask: (B, 1, T, S) or None  bias: (1 or B, H, T, S) or None."""
    scores = tap("scores", q @ k.transpose(-1, -2) * cfg.scale)   # (B, H, T, S)
    if bias is not None:
        scores = tap("biased", scores + bias)                      # (B, H, T, S)
    if cfg.attn_logit_softcap is not None:
        scores = tap("capped", softcap(scores, cfg.attn_logit_softcap))  # (B, H, T, S)
    probs = tap("probs", softmax(scores, mask, cfg.mask_fill))     # (B, H, T, S)
    return tap("context", probs @ v)                                # (B, H, T, Dh)


def fused_attention(q, k, v, mask, cfg, bias=None):
    """The same attention as one `F.scaled_dot_product_attention` call (boolean mask, True = attend).

    Inside the kernel masked scores are -inf, not `cfg.mask_fill`: the same probabilities for
    any fill far below the scores, except a fully masked row, set to zeros here as in `softmax`.
    A bias goes in as a float mask, -inf where the boolean one blocks.
    """
    scores_mask = mask if bias is None else bias if mask is None else torch.where(mask, bias, float("-inf"))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=scores_mask, scale=cfg.scale)  # (B, H, T, Dh)
    if mask is not None:
        context = torch.where(mask.any(dim=-1, keepdim=True), context, 0)             # (B, H, T, Dh)
    return context


def attention(q, k, v, mask, cfg, tap, bias=None):
    """The attention `cfg.attention_impl` names: the reference's traced lines, one fused call, or the tiled loop."""
    if cfg.attention_impl == "tiled":
        context = tiled_context(q, k, v, mask, cfg, bias)                         # (B, H, T, Dh)
        return tap("context", context)                                            # (B, H, T, Dh)
    if cfg.attention_impl == "fused":
        return tap("context", fused_attention(q, k, v, mask, cfg, bias))          # (B, H, T, Dh)
    return scaled_dot_product_attention(q, k, v, mask, cfg, tap, bias)           # (B, H, T, Dh)


def check_impl(cfg):
    """A fused kernel has no soft-cap: refuse the combination rather than drop the cap."""
    if cfg.attention_impl == "fused" and cfg.attn_logit_softcap is not None:
        raise ValueError(f"Config.attention_impl='fused' has no logit soft-cap (F.scaled_dot_product_attention and "
                         f"keras.ops.dot_product_attention take none); received attn_logit_softcap="
                         f"{cfg.attn_logit_softcap!r}: use attention_impl='reference'")


class ScaledDotProductAttention(nn.Module):
    """The bare attention function as a component: q, k, v already split into heads."""

    def __init__(self, cfg):
        super().__init__()
        check_impl(cfg)
        self.cfg = cfg

    def position_mask(self, mask, T, S, device=None):
        """`mask` and the config's causal rule and window, combined."""
        cfg = self.cfg
        rules = ([causal_mask(T, S, cfg.causal_alignment, device)] if cfg.causal else []) + \
            ([window_mask(T, S, cfg.sliding_window, cfg.sliding_window_right, cfg.causal_alignment, device)]
             if cfg.sliding_window is not None else [])
        for rule in rules:
            mask = rule[None, None] if mask is None else mask & rule[None, None]   # (B, 1, T, S)
        return mask

    def forward(self, q, k, v, mask=None):
        checks.sdpa_inputs(checks.spec(q), checks.spec(k), checks.spec(v), checks.spec(mask))
        mask = self.position_mask(mask, q.shape[2], k.shape[2], q.device)       # (B, 1, T, S)
        return attention(q, k, v, mask, self.cfg, trace.tap_for(self))


class MultiHeadAttention(nn.Module):
    """Self-attention (context=None) or cross-attention over `context`.

    `sliding`: does this layer use the config's window (None: whenever `cfg.sliding_window` is set).
    `cross`: a decoder's cross-attention, whose cache keeps the context's keys and values (see forward).
    """

    def __init__(self, cfg, causal=None, sliding=None, cross=False):
        super().__init__()
        check_impl(cfg)
        self.cfg = cfg
        self.causal = cfg.causal if causal is None else causal
        self.cross = cross
        self.window = cfg.sliding_window if sliding is not False else None
        H, KV, Dh = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.query = Linear(cfg.d_model, H * Dh, cfg.use_bias)
        self.key = Linear(cfg.d_model, KV * Dh, cfg.use_bias)
        self.value = Linear(cfg.d_model, KV * Dh, cfg.use_bias)
        self.query_norm = RMSNorm(cfg, Dh) if cfg.qk_norm else None
        self.key_norm = RMSNorm(cfg, Dh) if cfg.qk_norm else None
        self.rotary = RotaryEmbedding(cfg) if cfg.position == "rotary" else None
        self.output = Linear(H * Dh, cfg.d_model, cfg.projection_bias)

    def split_heads(self, x):
        B, T, width = x.shape  # width H Dh for queries, KV Dh for keys and values
        Dh = self.cfg.head_dim
        return x.reshape(B, T, width // Dh, Dh).permute(0, 2, 1, 3)  # (B, H or KV, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = x.shape
        x = x.permute(0, 2, 1, 3).clone(memory_format=torch.contiguous_format)  # the copy reshape would make,
        return x.reshape(B, T, H * Dh)  # (B, T, H Dh)    made explicit: torch.export cannot tell it is needed
        #                                                 after the fused kernel at symbolic shapes, T5's H Dh != D

    def forward(self, x, context=None, mask=None, cache=None, position_ids=None, position_bias=None):
        """x: (B, T, D)  context: (B, S, D) or None  mask: (B, S) padding, True = attend.

        `cache`, a dict, holds the keys and values of earlier positions (KV heads only: the
        cache is G times smaller than the queries' heads): new ones are appended, and the T
        queries attend to all S = past + T of them. A cross-attention layer (`cross`) keeps its
        context's instead, as `cross_key` and `cross_value`: projected on the first call and reused
        after, when `context` may be None. `position_ids` (B, T) place the tokens for the rotary
        embedding; default past .. past + T - 1. `position_bias` (1 or B, H, T, S) is added to the
        scores (T5's relative position bias).
        """
        reuse = self.cross and cache is not None and "cross_key" in cache  # the context's keys, kept
        past = cache["key"].shape[2] if cache and "key" in cache and not self.cross else 0
        checks.attention_inputs(checks.spec(x), checks.spec(context), checks.spec(mask), past,
                                self.cfg.d_model, cache["cross_key"].shape[2] if reuse else None)
        tap = trace.tap_for(self)
        source = x if context is None else context
        q = tap("q", self.split_heads(self.query(x)))        # (B, H, T, Dh)
        k = cache["cross_key"] if reuse else tap("k", self.split_heads(self.key(source)))     # (B, KV, S, Dh)
        v = cache["cross_value"] if reuse else tap("v", self.split_heads(self.value(source)))  # (B, KV, S, Dh)
        if self.query_norm is not None:
            q, k = self.query_norm(q), (k if reuse else self.key_norm(k))  # (B, H, T, Dh), (B, KV, S, Dh)
        if self.rotary is not None:
            rotated = self.rotary(q, k, rotary_positions(position_ids, x.shape[0], q.shape[2], past, x.device))
            q, k = rotated["q"], rotated["k"]                # (B, H, T, Dh), (B, KV, S, Dh)
        if cache is not None and self.cross:
            cache["cross_key"], cache["cross_value"] = k, v
        elif cache is not None:
            if "key" in cache:
                k = torch.cat([cache["key"], k], dim=2)  # (B, KV, S, Dh)
                v = torch.cat([cache["value"], v], dim=2)
            cache["key"], cache["value"] = k, v
        T, S, groups = q.shape[2], k.shape[2], q.shape[1] // k.shape[1]
        if position_bias is not None:
            checks.position_bias(checks.spec(position_bias), (x.shape[0], q.shape[1], T, S))
        m = attention_mask(mask, T, S, self.causal, self.window, self.cfg.sliding_window_right,
                           self.cfg.causal_alignment, x.device)                             # (B, 1, T, S)
        context_heads = attention(q, repeat_kv(k, groups), repeat_kv(v, groups), m, self.cfg, tap,
                                  position_bias)                                 # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context_heads)))       # (B, T, D)


def rotary_positions(position_ids, B, T, past, device=None):
    """(B, T) positions for the rotary embedding: the given ones, or past .. past + T - 1 in every row."""
    if position_ids is not None:
        return position_ids
    return torch.arange(past, past + T, device=device)[None, :].expand(B, T)     # (B, T)
