"""Scaled dot-product attention and multi-head attention.

Reference only: `attention_probs`, `tapped_only` (what the hand-written backward needs).

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

`cfg.attention_impl` picks how the three lines run: "reference" taps each one; "fused" is
one call with nothing tapped inside (a library's fused kernel; here one NumPy expression),
so its scores and probabilities never exist outside it. Its backward recomputes them from
q and k, as FlashAttention's backward does, instead of keeping a (B, H, T, S) tensor.

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
from numpy_ref.activations import softmax, softmax_backward
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


def attention_flops(B, H, T, S, Dh, causal):
    """The scaled dot-product core on B H T S (query, key) pairs: the same for every attention_impl."""
    pairs = B * H * T * S
    yield Op("scores", "attention", 2 * pairs * Dh, pairs=True, causal=causal)
    for step in ("scale", "mask"):
        yield Op(step, "elementwise", pairs * PER_ELEMENT[step], pairs=True, causal=causal)
    yield Op("softmax", "softmax", pairs * PER_ELEMENT["softmax"], pairs=True, causal=causal)
    yield Op("context", "attention", 2 * pairs * Dh, pairs=True, causal=causal)


def fused_attention(q, k, v, mask, cfg):
    """The same attention as one expression, nothing tapped inside: NumPy's stand-in for a fused kernel."""
    return softmax(q @ k.swapaxes(-1, -2) * cfg.scale, mask, cfg.mask_fill) @ v     # (B, H, T, Dh)


def attention(q, k, v, mask, cfg, tap):
    """The attention `cfg.attention_impl` names: the reference's traced lines, or one fused call."""
    if cfg.attention_impl == "fused":
        return tap("context", fused_attention(q, k, v, mask, cfg))                # (B, H, T, Dh)
    return scaled_dot_product_attention(q, k, v, mask, cfg, tap)                 # (B, H, T, Dh)


def attention_probs(saved, q, k, mask, cfg):
    """The probabilities a backward needs: the tapped ones, or (fused) recomputed from q and k."""
    if "probs" in saved.taps:
        return saved.taps["probs"]                                               # (B, H, T, S)
    return softmax(q @ k.swapaxes(-1, -2) * cfg.scale, mask, cfg.mask_fill)      # (B, H, T, S)


def tapped_only(saved):
    """`saved.tap` for the lines the forward tapped: a fused call tapped its context alone."""
    return lambda name, grad: saved.tap(name, grad) if name in saved.taps else grad


def scaled_dot_product_attention_backward(grad, q, k, v, probs, mask, cfg, tap):
    """The forward's three lines undone in reverse; `tap` records each gradient under its name.

        context = probs v     =>  dprobs = dcontext v^T,   dv = probs^T dcontext
        probs = softmax(...)  =>  dscores = softmax_backward(dprobs)  (masked scores get 0)
        scores = q k^T * c    =>  dq = dscores k c,        dk = dscores^T q c

    Each key's dv and dk sum over the queries that attended to it. Returns (dq, dk, dv).
    """
    grad = tap("context", grad)                                               # (B, H, T, Dh)
    d_probs = tap("probs", grad @ v.swapaxes(-1, -2))                         # (B, H, T, S)
    d_v = probs.swapaxes(-1, -2) @ grad                                       # (B, H, S, Dh)
    d_scores = tap("scores", softmax_backward(d_probs, probs, mask))          # (B, H, T, S)
    d_q = d_scores @ k * cfg.scale                                            # (B, H, T, Dh)
    d_k = d_scores.swapaxes(-1, -2) @ q * cfg.scale                           # (B, H, S, Dh)
    return d_q, d_k, d_v


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
        return attention(q, k, v, mask, self.cfg, trace.tap_for(self))

    def flops(self, q, k, **_):
        (B, H, T, Dh), S = q, k[2]
        yield from attention_flops(B, H, T, S, Dh, self.cfg.causal)

    def backward(self, grad):
        saved = autograd.saved(self)
        q, k, v, mask = (saved.inputs[n] for n in ("q", "k", "v", "mask"))
        if self.cfg.causal:
            tri = causal_mask(q.shape[2], k.shape[2])[None, None]                # (1, 1, T, S)
            mask = tri if mask is None else mask & tri
        probs = attention_probs(saved, q, k, mask, self.cfg)                     # (B, H, T, S)
        return scaled_dot_product_attention_backward(grad, q, k, v, probs, mask, self.cfg, tapped_only(saved))


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
        context_heads = attention(q, k, v, m, self.cfg, tap)                    # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context_heads)))       # (B, T, D)

    def flops(self, x, context=None, **_):
        (B, T, D), S = x, (x if context is None else context)[1]
        yield from scoped("query", self.query.flops((B, T, D)))
        yield from scoped("key", self.key.flops((B, S, D)))
        yield from scoped("value", self.value.flops((B, S, D)))
        yield from attention_flops(B, self.cfg.num_heads, T, S, self.cfg.head_dim, self.causal)
        yield from scoped("output", self.output.flops((B, T, D)))

    def saved(self, f, x, context=None, **_):
        """What torch_impl's autograd keeps (the unfused path; `tests/test_costs.py` counts it): the
        projections' shared input, q, k^T and v laid out for the batched matmuls, the mask, two
        score-shaped tensors and the merged heads. Cross-attention's key/value input is the
        encoder's output, kept once by the model."""
        (B, T, D), S = x, (x if context is None else context)[1]
        H = self.cfg.num_heads
        yield Saved("", "q/k/v input" if context is None else "query input", B * T * D * f)
        yield Saved("", "q (B H, T, Dh) copy for the batched matmul", B * T * D * f)
        yield Saved("", "k^T (B H, Dh, S) copy", B * S * D * f)
        yield Saved("", "v (B H, S, Dh) copy", B * S * D * f)
        yield Saved("", "attention mask", (B * T * S if self.causal else B * S) * BOOL)
        yield Saved("", "softmax output", B * H * T * S * f)
        yield Saved("", "row-has-a-key mask", (B * T if self.causal else B) * BOOL)
        yield Saved("", "probabilities, fully masked rows zeroed", B * H * T * S * f)
        yield from scoped("output", self.output.saved(f, (B, T, D)))

    def peak(self, f, live, x, context=None, **_):
        """Inference: the input, q, k, v and `live[0]` score-shaped tensors at once (+ a causal mask)."""
        (B, T, D), S = x, (x if context is None else context)[1]
        scores = B * self.cfg.num_heads * T * S
        return (2 * B * T * D + 2 * B * S * D) * f + live[0] * scores * f + (B * T * S if self.causal else 0)

    def backward(self, grad):
        """dL/d output (B, T, D) -> dx, or (dx, dcontext) for cross-attention.

        split_heads and merge_heads only move entries, so each one's backward is the other.
        In self-attention x feeds the queries, the keys and the values: dx sums all three.
        """
        saved = autograd.saved(self)
        tap = saved.tap
        q, k, v = saved.taps["q"], saved.taps["k"], saved.taps["v"]
        m = attention_mask(saved.inputs["mask"], q.shape[2], k.shape[2], self.causal)  # (B, 1, T, S)
        d_merged = tap("merged", self.output.backward(grad))                     # (B, T, D)
        probs = attention_probs(saved, q, k, m, self.cfg)                        # (B, H, T, S)
        d_q, d_k, d_v = scaled_dot_product_attention_backward(self.split_heads(d_merged), q, k, v, probs, m,
                                                              self.cfg, tapped_only(saved))
        d_source = self.value.backward(self.merge_heads(tap("v", d_v)))          # (B, S, D)
        d_source = d_source + self.key.backward(self.merge_heads(tap("k", d_k)))  # (B, S, D)
        d_x = self.query.backward(self.merge_heads(tap("q", d_q)))               # (B, T, D)
        if saved.inputs["context"] is None:
            return d_x + d_source                                                # (B, T, D)
        return d_x, d_source

