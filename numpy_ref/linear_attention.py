"""Linear attention ("Transformers are RNNs") and Performer's FAVOR+: attention through a feature map.

Reference only: `LinearAttention.feature_map_peak`, `PerformerAttention.feature_map_peak` (for `peak`).

Shape legend: B batch, H heads, T query positions, S key positions, Dh head width, M features
(Dh for linear attention's elu + 1, `cfg.performer_features` for Performer's random features).

Softmax attention weighs key j for query i by exp(q_i . k_j / sqrt(Dh)), a (T, S) matrix. Replace the
exponential by a similarity that factorizes through a feature map, sim(q, k) = phi(q) . phi(k), and the
sum over the keys can be taken once for every query (matrix products are associative):

    out_i = sum_j (phi(q_i) . phi(k_j)) v_j / sum_j phi(q_i) . phi(k_j)
          = phi(q_i) kv / phi(q_i) z,       kv = sum_j phi(k_j)^T v_j  (M, Dh),  z = sum_j phi(k_j)  (M,)

kv and z do not grow with the sequence: 2 B H M Dh (S + T) multiply-adds for the numerator, against
softmax's 2 B H T S Dh, and no (T, S) tensor ever exists. Causal: query i may only sum the keys up to
its own position, so kv and z become prefix sums over positions (a cumulative sum), and the pair
(kv_i, z_i) is a recurrent state carried from one token to the next: the paper's title. (Here the
prefix sums are materialized, (B, H, T, M, Dh), as the paper's reference PyTorch code does; its CUDA
kernel keeps one state at a time.) With T queries and S >= T keys, query i sits at key position
S - T + i ("bottom_right", a cache's last T) or at i ("top_left"), as `cfg.causal_alignment` says.
A padding mask (B, S), True = attend, zeroes the masked keys' features, so they add nothing to kv or z.
No (T, S) mask can be applied: the keys are summed before any query is seen. A query with no key to
attend to (denominator 0, numerator 0 with it) gets zeros, as a fully masked softmax row does.

The two feature maps:

- `LinearAttention` (Katharopoulos et al. 2020): phi(x) = elu(x) + 1, positive (the denominator never
  vanishes or changes sign) and M = Dh. It is a different attention, not an approximation of softmax:
  phi(q) . phi(k) is not exp(q . k / sqrt(Dh)) for any M.
- `PerformerAttention` (FAVOR+, Choromanski et al. 2020): positive random features

      phi(x) = exp(x W - |x|^2 / 2) / sqrt(M),   x = q sqrt(scale) = q Dh^-1/4,  W (Dh, M) ~ N(0, 1)

  for which E_W[phi(q) . phi(k)] = exp(q . k / sqrt(Dh)) exactly: an unbiased estimate of every softmax
  weight, with a relative spread ~ 1/sqrt(M), and positive, so the estimated denominator is too. W is
  the weight `random_features` (kernel layout [in, out]), drawn like every weight by
  `conformance.weights.initialize` (N(0, 1) here, not the kernels' N(0, 0.02)) and loaded into all
  three frameworks, so they draw nothing themselves. Independent Gaussian columns; Performer's
  orthogonal ones (lower variance) are another draw of the same weight, loadable as it is.
  Stabilised as FAVOR+'s code does, by a max subtracted in the exponent: each query's own (over its M
  features), and one for the keys of a head (over every key position and feature, masked ones
  included), so the largest feature is 1/sqrt(M) and none overflows. Each is a common factor of a
  numerator and its denominator, so the output is unchanged; the maxima are held constant (no
  gradient flows through them: none should, the output does not depend on them). (FAVOR+ subtracts
  the max of x W alone: the features are then smaller by exp(|x|^2 / 2), and the ratio of two small
  numbers is what finite differences, at a fixed step, measure worst.)

Costs (non-causal): features B H (T + S) M Dh multiply-adds for Performer's projection, kv 2 B H S M Dh,
numerator 2 B H T M Dh, denominator 2 B H T M: linear in T and S. Causal adds the prefix sums'
B H S M (Dh + 1) additions and keeps (B, H, T, M, Dh) of state.
"""
import math

import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import BOOL, Op, Saved
from numpy_ref import autograd
from numpy_ref._module import Module


def key_mask(mask):
    """A (B, S) padding mask as (B, 1, S, 1), True = attend: the keys whose features are kept."""
    return mask.astype(bool)[:, None, :, None]                                 # (B, 1, S, 1)


def elu_feature_map(x):
    """phi(x) = elu(x) + 1: x + 1 above 0, exp(x) below; positive everywhere."""
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0))) + 1                  # (B, H, T, M)


def random_feature_map(x, features, scale, axes):
    """FAVOR+'s phi(x) = exp(x W - |x|^2 / 2 - max) / sqrt(M), x = x sqrt(scale); the max over `axes`."""
    x = x * math.sqrt(scale)                                                      # (B, H, T, Dh)
    exponent = x @ features - (x * x).sum(axis=-1, keepdims=True) / 2           # (B, H, T, M)
    shift = exponent.max(axis=axes, keepdims=True)                              # (B, H, T or 1, 1)
    return np.exp(exponent - shift) / math.sqrt(features.shape[-1])             # (B, H, T, M)


def prefix_sums(x, T, offset):
    """Sums over key positions up to each of T queries: cumsum over S, then the T rows from `offset`."""
    return np.cumsum(x, axis=2)[:, :, offset:offset + T]                        # (B, H, T, ...)


def nonzero(denominator):
    """The denominator, 1 where it is 0 (a query with no key: its numerator is 0, its output 0)."""
    return np.where(denominator > 0, denominator, 1)                           # (B, H, T, 1)


def linear_attention(query_features, key_features, v, tap):
    """phi(Q) (phi(K)^T V) / phi(Q) sum_j phi(K_j): every query reads the same kv and z."""
    kv = tap("kv", key_features.swapaxes(-1, -2) @ v)                           # (B, H, M, Dh)
    z = tap("normalizer", key_features.sum(axis=2)[..., None])                  # (B, H, M, 1)
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


def elu_feature_map_backward(grad, x):
    """d(elu(x) + 1)/dx: 1 above 0, exp(x) below."""
    return grad * np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))              # (B, H, T, Dh)


def random_feature_map_backward(grad, x, phi, features, scale):
    """phi = exp(x' W - |x'|^2 / 2 - c) / sqrt(M), x' = x sqrt(scale), c held constant:

        dphi/dx' = phi (W - x'):   dx' = (dphi phi) W^T - sum_m (dphi phi) x'
        dW = x'^T (dphi phi), summed over every position
    Returns (dx, dW)."""
    s = math.sqrt(scale)
    xs = x * s                                                                  # (B, H, T, Dh)
    g = grad * phi                                                              # (B, H, T, M)
    d_x = (g @ features.T - g.sum(axis=-1, keepdims=True) * xs) * s            # (B, H, T, Dh)
    d_features = np.einsum("bhtd,bhtm->dm", xs, g)                             # (Dh, M)
    return d_x, d_features


def prefix_sums_backward(grad, S, offset):
    """prefix_sums' backward: the T rows' gradients placed at offset.., then summed from each key onward."""
    full = np.zeros(grad.shape[:2] + (S,) + grad.shape[3:], grad.dtype)
    full[:, :, offset:offset + grad.shape[2]] = grad
    return np.flip(np.cumsum(np.flip(full, axis=2), axis=2), axis=2)            # (B, H, S, ...)


def linear_attention_backward(grad, saved, v, causal, offset):
    """context = N / D  =>  dN = dcontext / D,  dD = -sum_d(dcontext context) / D (0 where D was 0);
    then the products of `linear_attention` (or their prefix sums) undone. Returns (dphi(Q), dphi(K), dV)."""
    tap = saved.tap
    qf, kf, kv, z = (saved.taps[n] for n in ("query_features", "key_features", "kv", "normalizer"))
    context, denominator = saved.taps["context"], saved.taps["denominator"]
    grad = tap("context", grad)                                                 # (B, H, T, Dh)
    d_num = tap("numerator", grad / nonzero(denominator))                      # (B, H, T, Dh)
    d_den = tap("denominator", np.where(denominator > 0, -(grad * context).sum(-1, keepdims=True)
                                        / nonzero(denominator), 0))            # (B, H, T, 1)
    if not causal:
        d_qf = d_num @ kv.swapaxes(-1, -2) + d_den @ z.swapaxes(-1, -2)        # (B, H, T, M)
        d_kv = tap("kv", qf.swapaxes(-1, -2) @ d_num)                          # (B, H, M, Dh)
        d_z = tap("normalizer", qf.swapaxes(-1, -2) @ d_den)                   # (B, H, M, 1)
        d_kf = v @ d_kv.swapaxes(-1, -2) + d_z.swapaxes(-1, -2)               # (B, H, S, M)
        return d_qf, d_kf, kf @ d_kv
    S = kf.shape[2]
    d_qf = np.einsum("bhtd,bhtmd->bhtm", d_num, kv) + d_den * z[..., 0]        # (B, H, T, M)
    d_kv = tap("kv", qf[..., :, None] * d_num[..., None, :])                    # (B, H, T, M, Dh)
    d_z = tap("normalizer", qf[..., None] * d_den[..., None, :])                # (B, H, T, M, 1)
    d_kv = prefix_sums_backward(d_kv, S, offset)                               # (B, H, S, M, Dh)
    d_z = prefix_sums_backward(d_z, S, offset)[..., 0]                        # (B, H, S, M)
    d_kf = np.einsum("bhsmd,bhsd->bhsm", d_kv, v) + d_z                        # (B, H, S, M)
    return d_qf, d_kf, np.einsum("bhsmd,bhsm->bhsd", d_kv, kf)


class _FeatureAttention(Module):
    """What both components share: the checks, the mask, the two attentions and their costs."""

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

    def flops(self, q, k, **_):
        (B, H, T, Dh), S, M, causal = q, k[2], self.features(), self.cfg.causal
        # causal: each key's phi(k)^T v is an outer product (elementwise) before its prefix sum
        yield Op("kv", *(("elementwise", B * H * S * M * Dh) if causal else ("attention", 2 * B * H * S * M * Dh)))
        yield Op("numerator", "attention", 2 * B * H * T * M * Dh)
        yield Op("denominator", "attention", 2 * B * H * T * M)
        yield Op("normalizer", "elementwise", B * H * S * M)
        yield Op("divide", "elementwise", B * H * T * Dh)
        if causal:  # the prefix sums of kv (the products phi(k) v^T are the kv op) and z
            yield Op("prefix_sums", "elementwise", B * H * S * M * Dh + B * H * S * M)

    def saved(self, f, q, k, mask=None, **_):
        """What torch_impl's autograd keeps (`tests/test_linear_attention.py` counts it): the feature maps'
        (`feature_map_saved`), then the two products' operands, the mask and the division's."""
        (B, H, T, Dh), S, M = q, k[2], self.features()
        yield from self.feature_map_saved(f, B, H, T, S, Dh, M)
        if mask is not None:
            yield Saved("", "key padding mask", B * S * BOOL)
        if self.cfg.causal:
            yield Saved("", "phi(k) and v for the outer products", B * H * S * (M + Dh) * f)
            yield Saved("", "kv prefix sums, (B, H, T, M, Dh)", B * H * T * M * Dh * f)
            yield Saved("", "z prefix sums", B * H * T * M * f)
        else:
            yield Saved("", "phi(K)^T and v for kv", B * H * S * (M + Dh) * f)
            yield Saved("", "kv and z", B * H * M * (Dh + 1) * f)
        yield Saved("", "phi(q) for the numerator and the denominator", B * H * T * M * f)
        yield Saved("", "denominator > 0", B * H * T * BOOL)
        yield Saved("", "denominator (zeros replaced) and numerator", B * H * T * (Dh + 1) * f)

    def peak(self, f, live, q, k, **_):
        """Inference: q, k, v and the larger of two stages, the feature map's (`feature_map_peak`) and the
        attention's: both features, then (causal) the outer products and their prefix sums at once, or kv,
        z, numerator, context and the denominator twice (`tests/test_linear_attention.py`: torch's allocator
        peak). `live` (the softmax's score-shaped tensors) has nothing to count here."""
        (B, H, T, Dh), S, M = q, k[2], self.features()
        if self.cfg.causal:
            attention = (T + S) * M + 2 * S * M * Dh
        else:
            attention = (T + S) * M + M * (Dh + 1) + 2 * T * Dh + 2 * T
        return B * H * ((T + 2 * S) * Dh + max(self.feature_map_peak(T, S, Dh, M), attention)) * f

    def attention_backward(self, saved, grad):
        q, k, v, mask = (saved.inputs[n] for n in ("q", "k", "v", "mask"))
        offset = causal_offset(self.cfg, q.shape[2], k.shape[2])
        d_qf, d_kf, d_v = linear_attention_backward(grad, saved, v, self.cfg.causal, offset)
        d_qf = saved.tap("query_features", d_qf)                                # (B, H, T, M)
        d_kf = saved.tap("key_features", d_kf)                                  # (B, H, S, M)
        if mask is not None:
            d_kf = np.where(key_mask(mask), d_kf, 0)                            # (B, H, S, M)
        return q, k, d_qf, d_kf, d_v


class LinearAttention(_FeatureAttention):
    """Katharopoulos et al.'s linear attention, phi = elu + 1: q, k, v already split into heads."""

    def forward(self, q, k, v, mask=None):
        self.check(q, k, v, mask)
        tap = trace.tap_for(self)
        query_features = tap("query_features", elu_feature_map(q))             # (B, H, T, Dh)
        key_features = elu_feature_map(k)                                       # (B, H, S, Dh)
        if mask is not None:
            key_features = np.where(key_mask(mask), key_features, 0)              # (B, H, S, Dh)
        key_features = tap("key_features", key_features)                        # (B, H, S, Dh)
        return self.attend(query_features, key_features, v, tap)                # (B, H, T, Dh)

    def feature_map_saved(self, f, B, H, T, S, Dh, M):
        yield Saved("", "elu's q and k", B * H * (T + S) * Dh * f)

    def feature_map_peak(self, T, S, Dh, M):
        return T * Dh + 2 * S * Dh  # phi(q), then elu(k) and elu(k) + 1

    def flops(self, q, k, **shapes):
        (B, H, T, Dh), S = q, k[2]
        yield Op("feature_map", "activation", B * H * (T + S) * Dh * 2)
        yield from super().flops(q, k, **shapes)

    def backward(self, grad):
        saved = autograd.saved(self)
        q, k, d_qf, d_kf, d_v = self.attention_backward(saved, grad)
        return elu_feature_map_backward(d_qf, q), elu_feature_map_backward(d_kf, k), d_v


class PerformerAttention(_FeatureAttention):
    """Performer's FAVOR+ softmax estimate, M = `cfg.performer_features` random features `random_features` (Dh, M)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.random_features = self.param("random_features", cfg.head_dim, cfg.performer_features)

    def features(self):
        return self.cfg.performer_features

    def forward(self, q, k, v, mask=None):
        self.check(q, k, v, mask)
        tap = trace.tap_for(self)
        scale, w = self.cfg.scale, self.random_features
        query_features = tap("query_features", random_feature_map(q, w, scale, -1))  # (B, H, T, M)
        key_features = random_feature_map(k, w, scale, (2, 3))                 # (B, H, S, M)
        if mask is not None:
            key_features = np.where(key_mask(mask), key_features, 0)              # (B, H, S, M)
        key_features = tap("key_features", key_features)                        # (B, H, S, M)
        return self.attend(query_features, key_features, v, tap)                # (B, H, T, Dh)

    def feature_map_saved(self, f, B, H, T, S, Dh, M):
        yield Saved("", "x = q, k times scale^1/2 (for x W and |x|^2)", B * H * (T + S) * Dh * f)
        yield Saved("", "exp's output, queries and keys", B * H * (T + S) * M * f)

    def feature_map_peak(self, T, S, Dh, M):
        return T * M + S * Dh + 3 * S * M  # phi(q), then the keys' x, exponent, shifted exponent and exp

    def flops(self, q, k, **shapes):
        (B, H, T, Dh), S, M = q, k[2], self.features()
        yield Op("random_features", "projection", 2 * B * H * (T + S) * Dh * M)
        # the scale, |x|^2 / 2 (square, sum, halve), the subtractions, the max, exp, 1 / sqrt(M)
        yield Op("feature_map", "activation", B * H * (T + S) * (3 * Dh + 5 * M))
        yield from super().flops(q, k, **shapes)

    def backward(self, grad):
        saved = autograd.saved(self)
        q, k, d_qf, d_kf, d_v = self.attention_backward(saved, grad)
        w, scale = self.random_features, self.cfg.scale
        qf, kf = saved.taps["query_features"], saved.taps["key_features"]
        d_q, d_wq = random_feature_map_backward(d_qf, q, qf, w, scale)
        d_k, d_wk = random_feature_map_backward(d_kf, k, kf, w, scale)  # masked: d_kf and kf are 0 there
        autograd.accumulate(self, "random_features", d_wq + d_wk)
        return d_q, d_k, d_v
