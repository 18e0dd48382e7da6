"""Scaled dot-product attention and multi-head attention.

Reference only: `attention_probs`, `tapped_only`, `attention_backward` (what the hand-written
backward needs).

Shape legend: B batch, T query positions, S key positions, D model width, H query heads,
KV key/value heads, Dh head width (D / H unless the config sets it), G = H / KV.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(Dh) + mask) V

Why 1/sqrt(Dh): for q, k with independent unit-variance entries, q . k is a sum of Dh
terms with variance Dh; dividing by sqrt(Dh) brings the scores back to unit variance,
so the softmax neither saturates to one-hot (vanishing gradients) nor flattens.

Masks are boolean, True = attend, shaped (B, 1, T, S) so one mask serves every head.
A padding mask (B, S) hides keys; the causal mask hides key j from query i when j is
later than i. With a key/value cache the T queries are the *last* T of S positions,
so query i sits at absolute position S - T + i ("bottom_right" alignment; PyTorch's and
ONNX's `is_causal` put it at i, "top_left": `cfg.causal_alignment`). A sliding window W
keeps only each query's last W keys, itself included (Mistral, Gemma 2's local layers),
and R keys after it for bidirectional local attention. All combine by logical AND.

Grouped-query attention (Llama 2 70B, Llama 3, Mistral, Gemma): H query heads share KV < H
key/value heads, G = H / KV queries to a group, so the key/value projections and the cache
shrink by G; KV = 1 is multi-query attention. Gemma 2 soft-caps the scores, cap tanh(s / cap),
before the mask; QK-norm (Qwen3, Gemma 3) RMS-normalizes each head's q and k.

`cfg.attention_impl` picks how the three lines run: "reference" taps each one; "fused" is
one call with nothing tapped inside (a library's fused kernel; here one NumPy expression),
so its scores and probabilities never exist outside it. Its backward recomputes them from
q and k, as FlashAttention's backward does, instead of keeping a (B, H, T, S) tensor. "tiled" is
FlashAttention's own loop (`numpy_ref.tiled_attention`): blocks of queries and keys, an online
softmax, nothing (T, S) in float forward or backward.

Costs. Per head and (query, key) pair: 2 Dh FLOPs for the score, 2 Dh for its share of the
context, and the scale, mask and softmax elementwise: 4 B H T S Dh matmul FLOPs, quadratic in
the sequence. Backward keeps q, k and v (copies laid out for the batched matmuls), the mask and
two score-shaped tensors (the softmax output and the copy with fully masked rows zeroed).

Multi-head attention projects x to H independent (T, Dh) slices, attends in each, and
concatenates the H results back to D before the output projection: the same FLOPs as
one D-wide attention, but H different attention patterns.
"""
import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import BOOL, PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import softcap, softcap_backward, softmax, softmax_backward
from numpy_ref.linear import Linear
from numpy_ref.normalization import RMSNorm
from numpy_ref.rotary import RotaryEmbedding
from numpy_ref.tiled_attention import tiled_attention, tiled_attention_backward, tiled_flops


def causal_mask(T, S, alignment="bottom_right"):
    """(T, S) bool: query i (at position S - T + i, or i when "top_left") sees keys up to its own."""
    offset = S - T if alignment == "bottom_right" else 0
    return np.arange(S)[None, :] <= np.arange(T)[:, None] + offset


def window_mask(T, S, window, right=0, alignment="bottom_right"):
    """(T, S) bool: query i (placed as in `causal_mask`) sees keys i - window < j <= i + right."""
    i = np.arange(T)[:, None] + (S - T if alignment == "bottom_right" else 0)
    j = np.arange(S)[None, :]
    return (j > i - window) & (j <= i + right)


def attention_mask(padding_mask, T, S, causal, window=None, right=0, alignment="bottom_right"):
    """Combine a (B, S) padding mask, the causal rule and a window into a (B, 1, T, S) mask, or None."""
    mask = None
    if padding_mask is not None:
        mask = padding_mask.astype(bool)[:, None, None, :]                      # (B, 1, 1, S)
    rules = ([causal_mask(T, S, alignment)] if causal else []) + \
        ([window_mask(T, S, window, right, alignment)] if window is not None else [])
    for rule in rules:
        rule = rule[None, None]                                                 # (1, 1, T, S)
        mask = rule if mask is None else mask & rule                            # (B, 1, T, S)
    return mask


def repeat_kv(x, groups):
    """(B, KV, S, Dh) -> (B, KV G, S, Dh): key/value head g serves query heads g G .. g G + G - 1."""
    return x if groups == 1 else np.repeat(x, groups, axis=1)


def repeat_kv_backward(grad, groups):
    """Each key/value head's gradient is the sum over the G query heads it served."""
    if groups == 1:
        return grad
    B, H, S, Dh = grad.shape
    return grad.reshape(B, H // groups, groups, S, Dh).sum(axis=2)              # (B, KV, S, Dh)


def scaled_dot_product_attention(q, k, v, mask, cfg, tap, bias=None):
    """q: (B, H, T, Dh)  k, v: (B, H, S, Dh)  mask: (B, 1, T, S) or None  bias: (1 or B, H, T, S) or None."""
    scores = tap("scores", q @ k.swapaxes(-1, -2) * cfg.scale)   # (B, H, T, S)
    if bias is not None:
        scores = tap("biased", scores + bias)                      # (B, H, T, S)
    if cfg.attn_logit_softcap is not None:
        scores = tap("capped", softcap(scores, cfg.attn_logit_softcap))  # (B, H, T, S)
    probs = tap("probs", softmax(scores, mask, cfg.mask_fill))    # (B, H, T, S)
    return tap("context", probs @ v)                               # (B, H, T, Dh)


def attention_flops(B, H, T, S, Dh, causal, softcapped=False, biased=False):
    """The scaled dot-product core on B H T S (query, key) pairs: the same for every attention_impl."""
    pairs = B * H * T * S
    yield Op("scores", "attention", 2 * pairs * Dh, pairs=True, causal=causal)
    for step in ("scale",) + (("position_bias",) if biased else ()) + (("softcap",) if softcapped else ()) + ("mask",):
        yield Op(step, "elementwise", pairs * PER_ELEMENT[step], pairs=True, causal=causal)
    yield Op("softmax", "softmax", pairs * PER_ELEMENT["softmax"], pairs=True, causal=causal)
    yield Op("context", "attention", 2 * pairs * Dh, pairs=True, causal=causal)


def fused_attention(q, k, v, mask, cfg, bias=None):
    """The same attention as one expression, nothing tapped inside: NumPy's stand-in for a fused kernel."""
    scores = q @ k.swapaxes(-1, -2) * cfg.scale + (0 if bias is None else bias)    # (B, H, T, S)
    return softmax(scores, mask, cfg.mask_fill) @ v                                # (B, H, T, Dh)


def attention(q, k, v, mask, cfg, tap, bias=None, module=None):
    """The attention `cfg.attention_impl` names: the reference's traced lines, one fused call, or the
    tiled loop (which keeps its rows' logsumexp with `module`'s call for the backward)."""
    if cfg.attention_impl == "tiled":
        context, lse = tiled_attention(q, k, v, mask, cfg, bias)                  # (B, H, T, Dh), (B, H, T)
        autograd.save(module, lse=lse)
        return tap("context", context)                                            # (B, H, T, Dh)
    if cfg.attention_impl == "fused":
        return tap("context", fused_attention(q, k, v, mask, cfg, bias))          # (B, H, T, Dh)
    return scaled_dot_product_attention(q, k, v, mask, cfg, tap, bias)           # (B, H, T, Dh)


def attention_probs(saved, q, k, mask, cfg, bias=None):
    """The probabilities a backward needs: the tapped ones, or (fused) recomputed from q and k."""
    if "probs" in saved.taps:
        return saved.taps["probs"]                                               # (B, H, T, S)
    scores = q @ k.swapaxes(-1, -2) * cfg.scale + (0 if bias is None else bias)  # (B, H, T, S)
    return softmax(scores, mask, cfg.mask_fill)                                  # (B, H, T, S)


def attention_backward(saved, grad, q, k, v, mask, cfg, bias=None):
    """(dq, dk, dv, dbias or None) of whichever attention ran: the tiled loop's own backward from its
    saved logsumexp, else the reference's lines on the tapped or recomputed probabilities."""
    tap = tapped_only(saved)
    if cfg.attention_impl == "tiled":
        return tiled_attention_backward(tap("context", grad), q, k, v, saved.taps["context"],
                                        saved.extras["lse"], mask, cfg, bias)
    probs = attention_probs(saved, q, k, mask, cfg, bias)                        # (B, H, T, S)
    d_q, d_k, d_v, d_scores = scaled_dot_product_attention_backward(grad, q, k, v, probs, mask, cfg, tap,
                                                                    saved.taps.get("capped"), bias is not None)
    return d_q, d_k, d_v, None if bias is None else autograd.sum_to_shape(d_scores, bias.shape)


def tapped_only(saved):
    """`saved.tap` for the lines the forward tapped: a fused call tapped its context alone."""
    return lambda name, grad: saved.tap(name, grad) if name in saved.taps else grad


def scaled_dot_product_attention_backward(grad, q, k, v, probs, mask, cfg, tap, capped=None, biased=False):
    """The forward's lines undone in reverse; `tap` records each gradient under its name.

        context = probs v     =>  dprobs = dcontext v^T,   dv = probs^T dcontext
        probs = softmax(...)  =>  dscores = softmax_backward(dprobs)  (masked scores get 0)
        capped = cap tanh(s / cap)  =>  ds = dcapped (1 - (capped / cap)^2)
        biased = s + bias     =>  ds = dbiased,             dbias = dbiased (summed where it broadcast)
        scores = q k^T * c    =>  dq = dscores k c,        dk = dscores^T q c

    Each key's dv and dk sum over the queries that attended to it. Returns (dq, dk, dv, dscores):
    dscores is what an added bias receives.
    """
    grad = tap("context", grad)                                               # (B, H, T, Dh)
    d_probs = tap("probs", grad @ v.swapaxes(-1, -2))                         # (B, H, T, S)
    d_v = probs.swapaxes(-1, -2) @ grad                                       # (B, H, S, Dh)
    d_scores = softmax_backward(d_probs, probs, mask)                         # (B, H, T, S)
    if cfg.attn_logit_softcap is not None:
        d_scores = softcap_backward(tap("capped", d_scores), capped, cfg.attn_logit_softcap)  # (B, H, T, S)
    if biased:
        d_scores = tap("biased", d_scores)                                    # (B, H, T, S)
    d_scores = tap("scores", d_scores)                                        # (B, H, T, S)
    d_q = d_scores @ k * cfg.scale                                            # (B, H, T, Dh)
    d_k = d_scores.swapaxes(-1, -2) @ q * cfg.scale                           # (B, H, S, Dh)
    return d_q, d_k, d_v, d_scores


def rescale_flops(cfg, B, H, T, S, Dh):
    """The tiled loop's online-softmax rescales, the one cost it adds to `attention_flops`."""
    if cfg.attention_impl == "tiled":
        yield Op("rescale", "elementwise", tiled_flops(B, H, T, S, Dh, cfg.attention_block_k))


def check_impl(cfg):
    """A fused kernel has no soft-cap: refuse the combination rather than drop the cap."""
    if cfg.attention_impl == "fused" and cfg.attn_logit_softcap is not None:
        raise ValueError(f"Config.attention_impl='fused' has no logit soft-cap (F.scaled_dot_product_attention and "
                         f"keras.ops.dot_product_attention take none); received attn_logit_softcap="
                         f"{cfg.attn_logit_softcap!r}: use attention_impl='reference'")


class ScaledDotProductAttention(Module):
    """The bare attention function as a component: q, k, v already split into heads."""

    def __init__(self, cfg):
        super().__init__()
        check_impl(cfg)
        self.cfg = cfg

    def position_mask(self, mask, T, S):
        """`mask` and the config's causal rule and window, combined."""
        cfg = self.cfg
        rules = ([causal_mask(T, S, cfg.causal_alignment)] if cfg.causal else []) + \
            ([window_mask(T, S, cfg.sliding_window, cfg.sliding_window_right, cfg.causal_alignment)]
             if cfg.sliding_window is not None else [])
        for rule in rules:
            mask = rule[None, None] if mask is None else mask & rule[None, None]   # (B, 1, T, S)
        return mask

    def forward(self, q, k, v, mask=None):
        checks.sdpa_inputs(checks.spec(q), checks.spec(k), checks.spec(v), checks.spec(mask))
        mask = self.position_mask(mask, q.shape[2], k.shape[2])                 # (B, 1, T, S)
        return attention(q, k, v, mask, self.cfg, trace.tap_for(self), module=self)

    def flops(self, q, k, **_):
        (B, H, T, Dh), S = q, k[2]
        yield from attention_flops(B, H, T, S, Dh, self.cfg.causal, self.cfg.attn_logit_softcap is not None)
        yield from rescale_flops(self.cfg, B, H, T, S, Dh)

    def backward(self, grad):
        saved = autograd.saved(self)
        q, k, v = (saved.inputs[n] for n in ("q", "k", "v"))
        mask = self.position_mask(saved.inputs["mask"], q.shape[2], k.shape[2])  # (B, 1, T, S)
        return attention_backward(saved, grad, q, k, v, mask, self.cfg)[:3]


class MultiHeadAttention(Module):
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
        return x.reshape(B, T, width // Dh, Dh).transpose(0, 2, 1, 3)  # (B, H or KV, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)  # (B, T, H Dh)

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
            rotated = self.rotary(q, k, rotary_positions(position_ids, x.shape[0], q.shape[2], past))
            q, k = rotated["q"], rotated["k"]                # (B, H, T, Dh), (B, KV, S, Dh)
        if cache is not None and self.cross:
            cache["cross_key"], cache["cross_value"] = k, v
        elif cache is not None:
            if "key" in cache:
                k = np.concatenate([cache["key"], k], axis=2)  # (B, KV, S, Dh)
                v = np.concatenate([cache["value"], v], axis=2)
            cache["key"], cache["value"] = k, v
        T, S, groups = q.shape[2], k.shape[2], q.shape[1] // k.shape[1]
        if position_bias is not None:
            checks.position_bias(checks.spec(position_bias), (x.shape[0], q.shape[1], T, S))
        m = attention_mask(mask, T, S, self.causal, self.window, self.cfg.sliding_window_right,
                           self.cfg.causal_alignment)                                       # (B, 1, T, S)
        context_heads = attention(q, repeat_kv(k, groups), repeat_kv(v, groups), m, self.cfg, tap,
                                  position_bias, module=self)                    # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context_heads)))       # (B, T, D)

    def cache_bytes(self, f, source=False):
        """Bytes the key/value cache keeps a token (f bytes a number): k and v of the KV heads only,
        G = H / KV times fewer than the queries' heads. A causal self-attention layer's, per token of
        the sequence; a sliding window could drop keys it no longer sees, this cache keeps them all.
        `source=True`: a cross-attention layer's, per token of the source (computed once, then read)."""
        return 2 * self.cfg.kv_heads * self.cfg.head_dim * f if (self.cross if source else self.causal) else 0

    def flops(self, x, context=None, position_bias=None, **_):
        (B, T, D), S = x, (x if context is None else context)[1]
        cfg, H, KV = self.cfg, self.cfg.num_heads, self.cfg.kv_heads
        yield from scoped("query", self.query.flops((B, T, D)))
        yield from scoped("key", self.key.flops((B, S, D)))
        yield from scoped("value", self.value.flops((B, S, D)))
        if self.query_norm is not None:
            yield from scoped("query_norm", self.query_norm.flops((B, H, T, cfg.head_dim)))
            yield from scoped("key_norm", self.key_norm.flops((B, KV, S, cfg.head_dim)))
        if self.rotary is not None:
            yield from scoped("rotary", self.rotary.flops((B, H, T, cfg.head_dim), (B, KV, S, cfg.head_dim)))
        yield from attention_flops(B, H, T, S, cfg.head_dim, self.causal, cfg.attn_logit_softcap is not None,
                                   position_bias is not None)
        yield from rescale_flops(cfg, B, H, T, S, cfg.head_dim)
        yield from scoped("output", self.output.flops((B, T, H * cfg.head_dim)))

    def saved(self, f, x, context=None, masked=True, **_):
        """What torch_impl's autograd keeps (the unfused path; `tests/test_costs.py` counts it): the
        projections' shared input, q, k^T and v laid out for the batched matmuls, the mask, two
        score-shaped tensors and the merged heads. Cross-attention's key/value input is the
        encoder's output, kept once by the model. `masked=False`: called with no padding mask (ViT);
        with no causal rule or window either there is no mask at all, so no row is fully masked and
        the softmax output is all that is kept of the scores."""
        (B, T, D), S = x, (x if context is None else context)[1]
        H, KV, Dh = self.cfg.num_heads, self.cfg.kv_heads, self.cfg.head_dim
        mask = masked or self.causal or self.window
        yield Saved("", "q/k/v input" if context is None else "query input", B * T * D * f)
        tiled = self.cfg.attention_impl == "tiled"
        yield from (self.tiled_saved(f, B, T, S) if tiled else self.matmul_copies_saved(f, B, T, S))
        if mask:
            yield Saved("", "attention mask", (B * T * S if self.causal or self.window else B * S) * BOOL)
        if not tiled:
            yield Saved("", "softmax output", B * H * T * S * f)
        if mask and not tiled:
            yield Saved("", "row-has-a-key mask", (B * T if self.causal or self.window else B) * BOOL)
            yield Saved("", "probabilities, fully masked rows zeroed", B * H * T * S * f)
        yield from scoped("output", self.output.saved(f, (B, T, H * Dh)))

    def matmul_copies_saved(self, f, B, T, S):
        """q, k^T and v as the reference's batched matmuls lay them out."""
        H, Dh = self.cfg.num_heads, self.cfg.head_dim
        yield Saved("", "q (B H, T, Dh) copy for the batched matmul", B * T * H * Dh * f)
        yield Saved("", "k^T (B H, Dh, S) copy", B * S * H * Dh * f)
        yield Saved("", "v (B H, S, Dh) copy", B * S * H * Dh * f)

    def tiled_saved(self, f, B, T, S):
        """What torch_impl's `TiledAttention` keeps besides the mask: q, k, v, its output and the rows'
        logsumexp, linear in S (the scores are recomputed tile by tile)."""
        H, Dh = self.cfg.num_heads, self.cfg.head_dim
        yield Saved("", "q (B, H, T, Dh)", B * T * H * Dh * f)
        yield Saved("", "k (B, H, S, Dh), repeated to the query heads", B * S * H * Dh * f)
        yield Saved("", "v (B, H, S, Dh), repeated to the query heads", B * S * H * Dh * f)
        yield Saved("", "tiled output (B, H, T, Dh), for D = rowsum(dO O)", B * T * H * Dh * f)
        yield Saved("", "row logsumexp (B, H, T)", B * H * T * f)

    def peak(self, f, live, x, context=None, **_):
        """Inference: the input, q, k, v and `live[0]` score-shaped tensors at once (+ a causal mask); tiled,
        `live[0]` tiles and its output twice instead: linear in S but for the bool causal mask."""
        (B, T, D), S = x, (x if context is None else context)[1]
        H, KV, Dh = self.cfg.num_heads, self.cfg.kv_heads, self.cfg.head_dim
        scores = B * H * T * S
        joined = 0
        if self.cfg.attention_impl == "tiled":  # one tile of scores a head; the output twice (blocks, then joined)
            scores = B * H * min(T, self.cfg.attention_block_q) * min(S, self.cfg.attention_block_k)
            joined = 2 * B * T * H * Dh
        return (B * T * D + B * T * H * Dh + 2 * B * S * KV * Dh + joined) * f + live[0] * scores * f \
            + (B * T * S if self.causal else 0)

    def backward(self, grad):
        """dL/d output (B, T, D) -> dx, or (dx, dcontext) for cross-attention; with a position bias,
        its gradient last: (dx, dbias) or (dx, dcontext, dbias).

        split_heads and merge_heads only move entries, so each one's backward is the other;
        repeat_kv's sums each group's gradient back onto its key/value head; the rotation and
        the QK-norm run backward through their own modules. In self-attention x feeds the
        queries, the keys and the values: dx sums all three. A bias added to the scores gets
        their gradient, summed over the batch where it was broadcast.
        """
        saved = autograd.saved(self)
        tap = saved.tap
        q, k, v = saved.taps["q"], saved.taps["k"], saved.taps["v"]              # as projected
        if self.query_norm is not None:
            q, k = autograd.last_output(self.query_norm), autograd.last_output(self.key_norm)
        if self.rotary is not None:
            rotated = autograd.last_output(self.rotary)
            q, k = rotated["q"], rotated["k"]                                    # as attended with
        groups = q.shape[1] // k.shape[1]
        k_all, v_all = repeat_kv(k, groups), repeat_kv(v, groups)              # (B, H, S, Dh)
        m = attention_mask(saved.inputs["mask"], q.shape[2], k.shape[2], self.causal, self.window,
                           self.cfg.sliding_window_right, self.cfg.causal_alignment)  # (B, 1, T, S)
        bias = saved.inputs["position_bias"]                                     # (1 or B, H, T, S) or None
        d_merged = tap("merged", self.output.backward(grad))                     # (B, T, H Dh)
        d_q, d_k, d_v, d_bias = attention_backward(saved, self.split_heads(d_merged), q, k_all, v_all, m,
                                                   self.cfg, bias)
        d_k, d_v = repeat_kv_backward(d_k, groups), repeat_kv_backward(d_v, groups)  # (B, KV, S, Dh)
        if self.rotary is not None:
            d_q, d_k = self.rotary.backward({"q": d_q, "k": d_k})
        if self.query_norm is not None:
            d_k, d_q = self.key_norm.backward(d_k), self.query_norm.backward(d_q)
        d_source = self.value.backward(self.merge_heads(tap("v", d_v)))          # (B, S, D)
        d_source = d_source + self.key.backward(self.merge_heads(tap("k", d_k)))  # (B, S, D)
        d_x = self.query.backward(self.merge_heads(tap("q", d_q)))               # (B, T, D)
        grads = (d_x + d_source,) if saved.inputs["context"] is None else (d_x, d_source)  # (B, T, D), (B, S, D)
        if bias is not None:
            grads += (d_bias,)                                                   # (1 or B, H, T, S)
        return grads if len(grads) > 1 else grads[0]


def rotary_positions(position_ids, B, T, past):
    """(B, T) positions for the rotary embedding: the given ones, or past .. past + T - 1 in every row."""
    if position_ids is not None:
        return position_ids
    return np.broadcast_to(np.arange(past, past + T)[None, :], (B, T))          # (B, T)
