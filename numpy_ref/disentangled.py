"""Disentangled attention (He et al. 2021, DeBERTa; v3, He et al. 2023): content and relative
position kept apart, each with its own projections, and their cross terms added to the scores.

Shape legend as in `numpy_ref.attention`; k the relative span (`Config.relative_span`: 256 in
v3), R (2k, D) the relative table. Row r of R embeds the relative distance r - k.

    pk = R W_k + b_k,   pq = R W_q + b_q        (the layer's own key and query projections:
                                                 v3's share_att_key; (H, 2k, Dh) per head)
    scores[i, j] = ( q_i . k_j                  content-to-content
                   + q_i . pk[d(i, j)]          content-to-position ("c2p"): what query i looks for
                                                at that distance
                   + k_j . pq[d(i, j)]          position-to-content ("p2c"): what key j offers to a
                   ) / sqrt(3 Dh)               query at that distance
    d(i, j) = clip(bucket(i - j) + k, 0, 2k - 1)

The scale is 1 / sqrt(Dh (1 + number of position terms)): three terms of unit variance make
the sum's variance 3, so sqrt(3 Dh) brings it back to 1 as sqrt(Dh) does for one.

Position-to-content reads d(i, j) too. transformers computes it as key j's row of K pq^T at
clip(-bucket(j - i) + k), then transposes; the bucketing is odd (bucket(-x) = -bucket(x)), so that
is the same index: one (T, S) table serves both terms, each a gather of a (B, H, T, 2k) product
(never a (T, S, Dh) tensor of position vectors).

Buckets (`position_buckets` b, v3: 256, reaching `max_relative_positions` m, v3: 512): distances
below b / 2 are exact; beyond, they share log-spaced buckets,

    bucket(x) = sign(x) (ceil(log(|x| / (b/2)) / log((m - 1) / (b/2)) (b/2 - 1)) + b/2),

so 200 -> 169, 300 -> 207, 511 -> 255 with b = 256, m = 512, and the clip at 2k - 1 holds
farther ones at the edge. The logarithm is float32, as transformers computes it (for |x| up to
2000 and these b, m the float64 logarithm gives the same buckets). Without buckets (b = 0) d is
the exact distance, clipped at +-k.

Masks: DeBERTa masks padded queries too, the (B, 1, T, T) outer product m_i m_j; their rows see no
key and are zeros here (transformers' softmax of a row of dtype minima is uniform instead; the
real positions never read them).

Costs, on top of multi-head attention's: the relative table through two projections,
2 x 2 (2k) D^2, and the two products q pk^T and k pq^T, 2 x 2 B H T (2k) Dh: linear in T (the
gathers move numbers, no arithmetic), so the quadratic part is attention's own 4 B H T^2 Dh.
"""
import math

import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import BOOL, INDEX, PER_ELEMENT, Op, Saved, scoped
from numpy_ref import autograd
from numpy_ref._module import Module
from numpy_ref.activations import softmax, softmax_backward
from numpy_ref.linear import Linear


def log_bucket_position(relative, buckets, max_position):
    """Distances past buckets / 2 in log-spaced buckets, in float32 as transformers' make_log_bucket_position.

    At |x| = max_position - 1 the quotient of the two logarithms is exactly 1 and the bucket an exact
    integer: one ulp decides it. The denominator's logarithm is taken of a tensor like the numerator's,
    element by element, so both run the same code path and the quotient is exactly 1 in every framework
    (TensorFlow's float32 log of a scalar and of the same value inside a tensor can differ by an ulp:
    keras-hub's buckets at 4 / 8 put distance 7 one bucket further than transformers')."""
    mid = buckets // 2
    sign = np.sign(relative)                                                     # (T, S)
    magnitude = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative)).astype(np.float32)
    scale = np.log(np.full_like(magnitude, (max_position - 1) / mid))          # (T, S): see the docstring
    log_position = np.ceil(np.log(magnitude / np.float32(mid)) / scale * np.float32(mid - 1)) + np.float32(mid)
    return np.where(magnitude <= mid, relative, log_position * sign).astype(np.int64)  # (T, S)


def relative_index(T, S, cfg):
    """d(i, j): the row of the relative table for query i and key j, (T, S) int."""
    span = cfg.relative_span
    relative = np.arange(T)[:, None] - np.arange(S)[None, :]                    # (T, S)
    if cfg.position_buckets:
        relative = log_bucket_position(relative, cfg.position_buckets, cfg.max_relative_positions or cfg.max_positions)
    return np.clip(relative + span, 0, 2 * span - 1)                            # (T, S)


def query_key_mask(mask):
    """(B, T) padding -> (B, 1, T, T): query i and key j both real (DeBERTa masks padded queries too)."""
    m = mask.astype(bool)
    return m[:, None, :, None] & m[:, None, None, :]                            # (B, 1, T, T)


def gather_scatter(grad, index, width):
    """The backward of a gather along the last axis: each (T, S) gradient goes back to the relative row
    it read, rows read by several pairs summed. grad (B, H, T, S), index (T, S) -> (B, H, T, width)."""
    one_hot = index[..., None] == np.arange(width)                              # (T, S, 2k)
    return np.einsum("bhts,tsr->bhtr", grad, one_hot.astype(grad.dtype))        # (B, H, T, 2k)


class DisentangledAttention(Module):
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
        return x.reshape(B, T, D // Dh, Dh).transpose(0, 2, 1, 3)  # (B, H, T, Dh)

    def merge_heads(self, x):
        B, H, T, Dh = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, H * Dh)  # (B, T, D)

    def forward(self, x, rel, mask=None):
        """x: (B, T, D)  rel: (2k, D), already layer-normed by the model  mask: (B, T), True = attend."""
        checks.disentangled_inputs(checks.spec(x), checks.spec(rel), checks.spec(mask), self.cfg.d_model,
                                   2 * self.cfg.relative_span)
        tap = trace.tap_for(self)
        q = tap("q", self.split_heads(self.query(x)))        # (B, H, T, Dh)
        k = tap("k", self.split_heads(self.key(x)))          # (B, H, S, Dh)
        v = tap("v", self.split_heads(self.value(x)))        # (B, H, S, Dh)
        index = relative_index(q.shape[2], k.shape[2], self.cfg)[None, None]    # (1, 1, T, S)
        scores = q @ k.swapaxes(-1, -2)                                          # (B, H, T, S)
        if "c2p" in self.terms:
            pk = tap("position_key", self.split_heads(self.key(rel[None])))      # (1, H, 2k, Dh)
            by_distance = q @ pk.swapaxes(-1, -2)                                # (B, H, T, 2k)
            scores = scores + tap("c2p", np.take_along_axis(by_distance, index, axis=-1))  # (B, H, T, S)
        if "p2c" in self.terms:
            pq = tap("position_query", self.split_heads(self.query(rel[None])))  # (1, H, 2k, Dh)
            by_distance = k @ pq.swapaxes(-1, -2)                                # (B, H, S, 2k)
            by_key = np.take_along_axis(by_distance, index.swapaxes(-1, -2), axis=-1)  # (B, H, S, T)
            scores = scores + tap("p2c", by_key.swapaxes(-1, -2))                # (B, H, T, S)
        scores = tap("scores", scores * self.scale)                              # (B, H, T, S)
        m = None if mask is None else query_key_mask(mask)                       # (B, 1, T, S)
        probs = tap("probs", softmax(scores, m, self.cfg.mask_fill))             # (B, H, T, S)
        context = tap("context", probs @ v)                                      # (B, H, T, Dh)
        return self.output(tap("merged", self.merge_heads(context)))             # (B, T, D)

    def flops(self, x, rel, **_):
        (B, T, D), R = x, rel[0]
        H, Dh = self.cfg.num_heads, self.cfg.head_dim
        pairs = B * H * T * T
        for name in ("query", "key", "value"):
            yield from scoped(name, getattr(self, name).flops((B, T, D)))
        yield Op("scores", "attention", 2 * pairs * Dh, pairs=True)
        for term, projection in (("c2p", "key"), ("p2c", "query")):
            if term in self.terms:  # the table through the layer's projection, then one product per head
                yield from scoped(f"position_{projection}", getattr(self, projection).flops((1, R, D)))
                yield Op(term, "attention", 2 * B * H * T * R * Dh)
                yield Op(f"{term}.add", "elementwise", pairs, pairs=True)
        for step in ("scale", "mask"):
            yield Op(step, "elementwise", pairs * PER_ELEMENT[step], pairs=True)
        yield Op("softmax", "softmax", pairs * PER_ELEMENT["softmax"], pairs=True)
        yield Op("context", "attention", 2 * pairs * Dh, pairs=True)
        yield from scoped("output", self.output.flops((B, T, D)))

    def saved(self, f, x, rel, mask=None, **_):
        """What torch_impl's autograd keeps: the input; q, k^T and v laid out for the batched matmuls;
        with position terms the relative table (both projections' input) and the (T, S) index once
        (each gather reads a view of it); per term the attending side again, as projected and as its
        batched copy, and the position projection transposed and batched; the mask, the softmax output
        and its copy with masked rows zeroed; the merged heads."""
        (B, T, D), R = x, rel[0]
        H, Dh = self.cfg.num_heads, self.cfg.head_dim
        yield Saved("", "q/k/v input", B * T * D * f)
        yield Saved("", "q, k^T, v (B H, T, Dh) copies for the batched matmuls", 3 * B * T * H * Dh * f)
        if self.terms:
            yield Saved("", "relative table (the projections' input)", R * D * f)
            yield Saved("", "relative index (T, S)", T * T * INDEX)
        for term in self.terms:
            yield Saved("", f"{term}: q or k as projected and its batched copy, the position projection "
                            f"(B H, Dh, 2k)", 2 * B * T * H * Dh * f + B * H * Dh * R * f)
        if mask is not None:
            yield Saved("", "attention mask", B * T * T * BOOL)
        yield Saved("", "softmax output", B * H * T * T * f)
        if mask is not None:
            yield Saved("", "row-has-a-key mask", B * T * BOOL)
        yield Saved("", "probabilities, fully masked rows zeroed", B * H * T * T * f)
        yield from scoped("output", self.output.saved(f, (B, T, D)))

    def peak(self, f, live, x, rel, **_):
        """Inference: the input, q, k, v, the two (B, H, T, 2k) position products and `live[0]`
        score-shaped tensors at once."""
        (B, T, D), R = x, rel[0]
        H = self.cfg.num_heads
        return (4 * B * T * D + len(self.terms) * B * H * T * R) * f + live[0] * B * H * T * T * f

    def backward(self, grad):
        """dL/d output (B, T, D) -> (dx, drel).

        The three terms are sums, so each gets the scores' gradient g (times the scale). Content:
        dq = g k, dk = g^T q. A gathered term c2p[i, j] = (q_i . pk_d) at d = d(i, j): its gradient
        goes back to entry (i, d) of q pk^T (`gather_scatter`), then dq += that pk and dpk = that^T q,
        summed over the batch; p2c likewise with keys and pq. The relative table reached the scores
        through the key and the query projections: drel sums both, and x's projections are undone
        after the table's (each Linear pops its latest call first).
        """
        saved = autograd.saved(self)
        tap = saved.tap
        q, k, v, probs = (saved.taps[n] for n in ("q", "k", "v", "probs"))
        mask = saved.inputs["mask"]
        m = None if mask is None else query_key_mask(mask)                       # (B, 1, T, S)
        T, S = q.shape[2], k.shape[2]
        index = relative_index(T, S, self.cfg)                                   # (T, S)
        R = 2 * self.cfg.relative_span
        d_context = tap("context", self.split_heads(tap("merged", self.output.backward(grad))))  # (B, H, T, Dh)
        d_v = probs.swapaxes(-1, -2) @ d_context                                 # (B, H, S, Dh)
        d_probs = tap("probs", d_context @ v.swapaxes(-1, -2))                   # (B, H, T, S)
        g = tap("scores", softmax_backward(d_probs, probs, m)) * self.scale      # (B, H, T, S)
        d_q, d_k = g @ k, g.swapaxes(-1, -2) @ q                                 # (B, H, T, Dh), (B, H, S, Dh)
        d_rel = 0.0
        if "p2c" in self.terms:
            pq = saved.taps["position_query"]                                    # (1, H, 2k, Dh)
            d_by_key = gather_scatter(tap("p2c", g).swapaxes(-1, -2), index.T, R)  # (B, H, S, 2k)
            d_k = d_k + d_by_key @ pq                                            # (B, H, S, Dh)
            d_pq = tap("position_query", (d_by_key.swapaxes(-1, -2) @ k).sum(axis=0, keepdims=True))  # (1, H, 2k, Dh)
            d_rel = d_rel + self.query.backward(self.merge_heads(d_pq))[0]       # (2k, D)
        if "c2p" in self.terms:
            pk = saved.taps["position_key"]                                      # (1, H, 2k, Dh)
            d_by_query = gather_scatter(tap("c2p", g), index, R)                 # (B, H, T, 2k)
            d_q = d_q + d_by_query @ pk                                          # (B, H, T, Dh)
            d_pk = tap("position_key", (d_by_query.swapaxes(-1, -2) @ q).sum(axis=0, keepdims=True))  # (1, H, 2k, Dh)
            d_rel = d_rel + self.key.backward(self.merge_heads(d_pk))[0]         # (2k, D)
        d_x = self.value.backward(self.merge_heads(tap("v", d_v)))               # (B, T, D)
        d_x = d_x + self.key.backward(self.merge_heads(tap("k", d_k)))           # (B, T, D)
        d_x = d_x + self.query.backward(self.merge_heads(tap("q", d_q)))         # (B, T, D)
        if not self.terms:
            d_rel = np.zeros_like(saved.inputs["rel"])                           # (2k, D)
        return d_x, d_rel
