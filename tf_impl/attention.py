"""Mirrors `numpy_ref.attention`.

Differs: masks are combined with `keras.ops.logical_and` (a 0/1 integer padding mask is cast
to bool first, as in numpy_ref). `MultiHeadAttention.output` shadows Keras's `Layer.output` (a
functional layer's output tensor) so the output projection keeps its canonical name; Keras's
`save_weights` skips attribute names that `Layer` defines, so it reaches the projection through
a private alias. The cache dict reaches `call` as the caller's object (see `tf_impl._layer`)
and is filled in place.
`fused_attention` is one `keras.ops.dot_product_attention` call, which takes (B, T, H, Dh):
the heads axis moves there and back around it, and the scale goes in as a tensor of q's dtype
(TensorFlow's `tf.cast` of a Python float rounds it through float32 first: 2e-8 off in float64).
"tiled" is `tf_impl.tiled_attention` (the loop; autodiff differentiates it: see there why).
Own lines: `fused_attention` (the library call and its layout).
"""
from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, Shadow
from tf_impl.activations import softcap, softmax
from tf_impl.linear import Linear
from tf_impl.normalization import RMSNorm
from tf_impl.rotary import RotaryEmbedding
from tf_impl.tiled_attention import tiled_attention


def causal_mask(T, S, alignment="bottom_right"):
    """(T, S) bool: query i (at position S - T + i, or i when "top_left") sees keys up to its own."""
    offset = S - T if alignment == "bottom_right" else 0
    return ops.arange(S)[None, :] <= ops.arange(T)[:, None] + offset


def window_mask(T, S, window, right=0, alignment="bottom_right"):
    """(T, S) bool: query i (placed as in `causal_mask`) sees keys i - window < j <= i + right."""
    i = ops.arange(T)[:, None] + (S - T if alignment == "bottom_right" else 0)
    j = ops.arange(S)[None, :]
    return ops.logical_and(j > i - window, j <= i + right)


def attention_mask(padding_mask, T, S, causal, window=None, right=0, alignment="bottom_right"):
    """Combine a (B, S) padding mask, the causal rule and a window into a (B, 1, T, S) mask, or None."""
    mask = None
    if padding_mask is not None:
        mask = ops.cast(padding_mask, "bool")[:, None, None, :]                 # (B, 1, 1, S)
    rules = ([causal_mask(T, S, alignment)] if causal else []) + \
        ([window_mask(T, S, window, right, alignment)] if window is not None else [])
    for rule in rules:
        rule = rule[None, None]                                                 # (1, 1, T, S)
        mask = rule if mask is None else ops.logical_and(mask, rule)            # (B, 1, T, S)
    return mask


def repeat_kv(x, groups):
    """(B, KV, S, Dh) -> (B, KV G, S, Dh): key/value head g serves query heads g G .. g G + G - 1."""
    return x if groups == 1 else ops.repeat(x, groups, axis=1)


def scaled_dot_product_attention(q, k, v, mask, cfg, tap, bias=None):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask: (B, 1, T, S) or None  bias: (1 or B, H, T, S) or None."""
    scores = tap("scores", ops.matmul(q, ops.swapaxes(k, -1, -2)) * cfg.scale)  # (B, H, T, S)
    if bias is not None:
        scores = tap("biased", scores + bias)                                   # (B, H, T, S)
    if cfg.attn_logit_softcap is not None:
        scores = tap("capped", softcap(scores, cfg.attn_logit_softcap))         # (B, H, T, S)
    probs = tap("probs", softmax(scores, mask, cfg.mask_fill))                  # (B, H, T, S)
    return tap("context", ops.matmul(probs, v))                                  # (B, H, T, Dh)


def fused_attention(q, k, v, mask, cfg, bias=None):
    """The same attention as one `keras.ops.dot_product_attention` call (boolean mask, True = attend;
    a bias, (1 or B, H, T, S), added to the scores inside it).

    With both, the mask goes into the bias (`mask_fill` where it blocks): Keras on its torch backend
    takes one of them. A fully masked row is set to zeros here, as in `softmax`."""
    heads_second = lambda x: ops.transpose(x, (0, 2, 1, 3))  # noqa: E731  (B, H, T, Dh) <-> (B, T, H, Dh)
    scale = ops.convert_to_tensor(cfg.scale, dtype=q.dtype)
    scores_mask = mask
    if bias is not None and mask is not None:
        bias, scores_mask = ops.where(mask, bias, cfg.mask_fill), None                  # (B, H, T, S)
    context = ops.dot_product_attention(heads_second(q), heads_second(k), heads_second(v), bias=bias,
                                        mask=scores_mask, scale=scale)                   # (B, T, H, Dh)
    context = heads_second(context)                                                      # (B, H, T, Dh)
    if mask is not None:
        context = ops.where(ops.any(mask, axis=-1, keepdims=True), context, 0)          # (B, H, T, Dh)
    return context


def attention(q, k, v, mask, cfg, tap, bias=None):
    """The attention `cfg.attention_impl` names: the reference's traced lines, one fused call, or the tiled loop."""
    if cfg.attention_impl == "tiled":
        context = tiled_attention(q, k, v, mask, cfg, bias)[0]                    # (B, H, T, Dh)
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


class ScaledDotProductAttention(Layer):
    """The bare attention function as a component: q, k, v already split into heads."""

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        check_impl(cfg)
        self.cfg = cfg

    def position_mask(self, mask, T, S):
        """`mask` and the config's causal rule and window, combined."""
        cfg = self.cfg
        rules = ([causal_mask(T, S, cfg.causal_alignment)] if cfg.causal else []) + \
            ([window_mask(T, S, cfg.sliding_window, cfg.sliding_window_right, cfg.causal_alignment)]
             if cfg.sliding_window is not None else [])
        for rule in rules:
            mask = rule[None, None] if mask is None else ops.logical_and(mask, rule[None, None])  # (B, 1, T, S)
        return mask

    def call(self, q, k, v, mask=None):
        checks.sdpa_inputs(checks.spec(q), checks.spec(k), checks.spec(v), checks.spec(mask))
        mask = self.position_mask(mask, q.shape[2], k.shape[2])                 # (B, 1, T, S)
        return attention(q, k, v, mask, self.cfg, trace.tap_for(self))


class MultiHeadAttention(Layer):
    """Self-attention (context=None) or cross-attention over `context`.

    `sliding`: does this layer use the config's window (None: whenever `cfg.sliding_window` is set).
    `cross`: a decoder's cross-attention, whose cache keeps the context's keys and values (see forward).
    """

    output = Shadow()  # Keras's `Layer.output` property: here the output projection

    def __init__(self, cfg, causal=None, sliding=None, cross=False, **kwargs):
        super().__init__(**kwargs)
        check_impl(cfg)
        self.cfg = cfg
        self.causal = cfg.causal if causal is None else causal
        self.cross = cross
        self.sliding = sliding
        self.window = cfg.sliding_window if sliding is not False else None
        H, KV, Dh = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        policy = self.dtype_policy
        self.query = Linear(cfg.d_model, H * Dh, cfg.use_bias, name="query", dtype=policy)
        self.key = Linear(cfg.d_model, KV * Dh, cfg.use_bias, name="key", dtype=policy)
        self.value = Linear(cfg.d_model, KV * Dh, cfg.use_bias, name="value", dtype=policy)
        self.query_norm = RMSNorm(cfg, Dh, name="query_norm", dtype=policy) if cfg.qk_norm else None
        self.key_norm = RMSNorm(cfg, Dh, name="key_norm", dtype=policy) if cfg.qk_norm else None
        self.rotary = RotaryEmbedding(cfg, name="rotary", dtype=policy) if cfg.position == "rotary" else None
        self.output = Linear(H * Dh, cfg.d_model, cfg.projection_bias, name="output", dtype=policy)
        self._saved_output = self.output  # Keras's save_weights skips names that Layer defines

    def split_heads(self, x):
        B, T, width = ops.shape(x)  # ints, or tensors for dynamic axes under tf.function (width is static)
        Dh = self.cfg.head_dim
        x = ops.reshape(x, (B, T, width // Dh, Dh))
        return ops.transpose(x, (0, 2, 1, 3))  # (B, H or KV, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = ops.shape(x)
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (B, T, H * Dh))  # (B, T, H Dh)

    def call(self, x, context=None, mask=None, cache=None, position_ids=None, position_bias=None):
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
            rotated = self.rotary(q, k, rotary_positions(position_ids, ops.shape(x)[0], ops.shape(q)[2], past))
            q, k = rotated["q"], rotated["k"]                # (B, H, T, Dh), (B, KV, S, Dh)
        if cache is not None and self.cross:
            cache["cross_key"], cache["cross_value"] = k, v
        elif cache is not None:
            if "key" in cache:
                k = ops.concatenate([cache["key"], k], axis=2)  # (B, KV, S, Dh)
                v = ops.concatenate([cache["value"], v], axis=2)
            cache["key"], cache["value"] = k, v
        T, S, groups = ops.shape(q)[2], ops.shape(k)[2], self.cfg.num_heads // self.cfg.kv_heads
        if position_bias is not None:
            checks.position_bias(checks.spec(position_bias), (ops.shape(x)[0], self.cfg.num_heads, T, S))
        m = attention_mask(mask, T, S, self.causal, self.window, self.cfg.sliding_window_right,
                           self.cfg.causal_alignment)                                       # (B, 1, T, S)
        context_heads = attention(q, repeat_kv(k, groups), repeat_kv(v, groups), m, self.cfg, tap,
                                  position_bias)                                 # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context_heads)))       # (B, T, D)


def rotary_positions(position_ids, B, T, past):
    """(B, T) positions for the rotary embedding: the given ones, or past .. past + T - 1 in every row."""
    if position_ids is not None:
        return position_ids
    return ops.broadcast_to(ops.arange(past, past + T)[None, :], (B, T))        # (B, T)
