"""Rotary position embedding (RoPE, Su et al. 2021): q and k turned by angles proportional
to their positions, so a query-key score depends on the two positions only through m - n.

Shape legend: B batch, H query heads, KV key/value heads (grouped-query attention: fewer),
T positions, Dh head width, Dr = `rotary_dim` (None: Dh) the rotated width, P = Dr / 2.

Pair i of a head at position m turns by the angle m theta_i, theta_i = base^(-2i / Dr):

    (x_a, x_b) -> (x_a cos(m theta_i) - x_b sin(m theta_i),
                   x_b cos(m theta_i) + x_a sin(m theta_i))

written for the whole head as x cos + rotate(x) sin, cos and sin laid out (B, T, Dr) like x.
Which features pair up is `rotary_pairing`: "half" pairs i with i + P (rotate(x) = [-x2, x1]:
Hugging Face, GPT-NeoX), "interleaved" pairs 2i with 2i + 1 (GPT-J, Meta's checkpoints). The
two are one rotation on permuted features: converting a checkpoint from one to the other
permutes the rows of W_q and W_k, and loading it with the wrong pairing gives plausible
nonsense. With Dr < Dh (GPT-NeoX, Phi) the first Dr features of each head turn, the rest pass.

Why the scores are relative: rotations satisfy R(a)^T R(b) = R(b - a), so
(R(m theta) q) . (R(n theta) k) = q . R((n - m) theta) k for every pair and any q, k. Nothing
is added to the token vectors (unlike a position table), values are not rotated, and a key
in a key/value cache keeps the rotation of its own position. Pair 0 (theta_0 = 1) turns once
every 6.3 positions, the last pair about once every 2 pi base: from local to long-range.

The frequencies, by `rope_scaling` (as transformers' `modeling_rope_utils`), theta_i above
being "none"; L = max_positions, L0 = `rope_original_max_positions` (None: L):
  linear   theta_i / factor (the same as dividing the positions by factor)
  dynamic  NTK-aware: theta_i from base' = base (factor s / L - (factor - 1))^(Dr / (Dr - 2)),
           s = max(seq_len, L): recomputed for a sequence longer than L, "none" below it
  llama3   with wavelengths w_i = 2 pi / theta_i: theta_i / factor where w_i > L0 / low
           (long waves interpolated), theta_i where w_i < L0 / high (short ones kept), and
           (1 - s) theta_i / factor + s theta_i between, s = (L0 / w_i - low) / (high - low)
  yarn     theta_i / factor (1 - e_i) + theta_i e_i, e_i = 1 - clamp((i - lo) / (hi - lo),
           0, 1): lo and hi the pairs that turn beta_fast and beta_slow times over L0,
           d(r) = Dr ln(L0 / (2 pi r)) / (2 ln base), floored and ceiled (`rope_truncate`) and
           clipped to [0, Dr - 1]. cos and sin are multiplied by the attention factor
           (`rope_attention_factor`, None: 0.1 ln(factor) + 1): the scores get its square.

Precision. transformers and keras-hub compute the frequencies and the angles m theta_i in
float32 (`rotary_float32`): at position 131071 (Llama 3's head, base 5e5) their cos is 3.4e-3
off the float64 one, far outside any tolerance, so a reference that must agree with them at
long positions rounds where they do: the frequencies in float32, in transformers' order of
operations (torch computes c / x as (1 / x) * c), the power correctly rounded (float32 powers
differ between libraries by an ulp: it is taken in float64 and rounded once), the angle as a
float32 product. cos and sin are then taken in float64 and cast to x's dtype: float64 cos
agrees across libraries, float32 cos does not. transformers takes cos in float32 in every
dtype, so in float64 it is 1e-7 off: a named difference, not an error.

Costs: x cos + rotate(x) sin is 3 FLOPs a rotated element of q and of k (rotate moves a
sign). The cos and sin tables are O(T Dr) with no weights: not counted, like the sinusoidal
table. What torch_impl's autograd keeps: cos and sin (the other factor of each product; q and
k would serve only the tables' gradient, and the tables need none). The backward is the
rotation's transpose: rotate^T = -rotate, so dx = dy cos - rotate(dy sin).
"""
import math

import numpy as np

from conformance.core import checks, trace
from conformance.core.costs import PER_ELEMENT, Op, Saved, elements
from numpy_ref import autograd
from numpy_ref._module import Module


def power(base, exponent, dtype):
    """base ** exponent in `dtype`, computed in float64 and rounded once: float32 powers are not
    correctly rounded, and libraries round them differently by an ulp."""
    return (np.asarray(base, np.float64) ** np.asarray(exponent, np.float64)).astype(dtype)


def rotary_frequencies(cfg, seq_len):
    """(inverse frequencies theta_i (P,), attention factor) for positions below `seq_len`; with
    `rotary_float32` in float32, in transformers' order of operations (c / x as torch computes it,
    (1 / x) * c), else in float64."""
    dtype = np.float32 if cfg.rotary_float32 else np.float64
    Dr = cfg.rotary_dim or cfg.head_dim
    base, factor = cfg.rope_theta, cfg.rope_factor
    original = cfg.rope_original_max_positions or cfg.max_positions
    if cfg.rope_scaling == "dynamic":
        s = np.maximum(seq_len, cfg.max_positions).astype(dtype)
        base = base * power(factor * s / cfg.max_positions - (factor - 1), Dr / (Dr - 2), dtype)
    two_i = np.arange(0, Dr, 2).astype(dtype)
    powers = power(base, two_i / Dr, dtype)                                       # (P,) base^(2i / Dr)
    inv_freq = 1 / powers                                                         # (P,)
    if cfg.rope_scaling == "linear":
        return inv_freq / factor, 1.0
    if cfg.rope_scaling == "llama3":
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        wavelength = 2 * math.pi * (1 / inv_freq)                                 # (P,)
        divided = np.where(wavelength > original / low, inv_freq / factor, inv_freq)  # (P,)
        s = (original * (1 / wavelength) - low) / (high - low)                    # (P,)
        smooth = (1 - s) * divided / factor + s * divided                         # (P,)
        medium = (wavelength >= original / high) & (wavelength <= original / low)  # (P,)
        return np.where(medium, smooth, divided), 1.0
    if cfg.rope_scaling == "yarn":
        attention = cfg.rope_attention_factor
        if attention is None:
            attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        turns = lambda r: Dr * math.log(original / (r * 2 * math.pi)) / (2 * math.log(base))  # noqa: E731
        lo, hi = turns(cfg.rope_beta_fast), turns(cfg.rope_beta_slow)
        if cfg.rope_truncate:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, Dr - 1)
        hi = hi + 0.001 if lo == hi else hi
        i = np.arange(Dr // 2).astype(dtype)
        ramp = np.clip((i - lo) / (hi - lo), 0, 1)                                # (P,)
        extrapolation = 1 - ramp                                                  # (P,)
        return 1 / (factor * powers) * (1 - extrapolation) + inv_freq * extrapolation, attention
    return inv_freq, 1.0


def rotary_angles(position_ids, inv_freq, cfg):
    """(B, T) positions -> (B, T, Dr) angles m theta_i, in theta's dtype (float32 if `rotary_float32`), laid
    out for `rotary_pairing`: [theta_0 .. theta_P-1, theta_0 .. theta_P-1] for "half", each twice in a
    row for "interleaved"."""
    angles = position_ids[..., None].astype(inv_freq.dtype) * inv_freq           # (B, T, P)
    if cfg.rotary_pairing == "half":
        return np.concatenate([angles, angles], axis=-1)                          # (B, T, Dr)
    return np.repeat(angles, 2, axis=-1)                                          # (B, T, Dr)


def rotate(x, pairing):
    """A quarter turn of every pair: (x_a, x_b) -> (-x_b, x_a)."""
    if pairing == "half":
        P = x.shape[-1] // 2
        return np.concatenate([-x[..., P:], x[..., :P]], axis=-1)                # (..., Dr)
    pairs = np.stack([-x[..., 1::2], x[..., 0::2]], axis=-1)                      # (..., P, 2)
    return pairs.reshape(x.shape)                                                 # (..., Dr)


def apply_rotary(x, cos, sin, cfg):
    """x (B, heads, T, Dh), cos and sin (B, T, Dr): the first Dr features of each head turned, the rest kept."""
    Dr = cos.shape[-1]
    x_rot, x_pass = x[..., :Dr], x[..., Dr:]                                      # (B, heads, T, Dr)
    turned = x_rot * cos[:, None] + rotate(x_rot, cfg.rotary_pairing) * sin[:, None]  # (B, heads, T, Dr)
    return np.concatenate([turned, x_pass], axis=-1)                              # (B, heads, T, Dh)


def apply_rotary_backward(grad, cos, sin, cfg):
    """The transpose of `apply_rotary`: rotate^T = -rotate (a quarter turn back), so the turned
    features get dy cos - rotate(dy sin) and the passed ones dy itself."""
    Dr = cos.shape[-1]
    g_rot, g_pass = grad[..., :Dr], grad[..., Dr:]                                # (B, heads, T, Dr)
    d_rot = g_rot * cos[:, None] - rotate(g_rot * sin[:, None], cfg.rotary_pairing)  # (B, heads, T, Dr)
    return np.concatenate([d_rot, g_pass], axis=-1)                               # (B, heads, T, Dh)


class RotaryEmbedding(Module):
    """q (B, H, T, Dh) and k (B, KV, T, Dh) rotated by their positions, position_ids (B, T) ints."""

    constant_taps = ("cos", "sin")  # functions of the integer positions alone: no gradient anywhere

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, q, k, position_ids):
        cfg = self.cfg
        checks.rotary_inputs(checks.spec(q), checks.spec(k), checks.spec(position_ids), cfg.head_dim)
        checks.rotary_positions(int(position_ids.min()), int(position_ids.max()), cfg.max_positions,
                                cfg.rope_scaling)
        tap = trace.tap_for(self)
        inv_freq, attention = rotary_frequencies(cfg, position_ids.max() + 1)          # (P,)
        angles = rotary_angles(position_ids, inv_freq, cfg).astype(np.float64)        # (B, T, Dr)
        cos = tap("cos", (np.cos(angles) * attention).astype(q.dtype))                 # (B, T, Dr)
        sin = tap("sin", (np.sin(angles) * attention).astype(q.dtype))                 # (B, T, Dr)
        q = tap("q", apply_rotary(q, cos, sin, cfg))                                   # (B, H, T, Dh)
        k = tap("k", apply_rotary(k, cos, sin, cfg))                                   # (B, KV, T, Dh)
        return {"q": q, "k": k}

    def flops(self, q, k, **_):
        Dr = self.cfg.rotary_dim or self.cfg.head_dim
        for name, shape in (("q", q), ("k", k)):
            yield Op(name, "elementwise", elements(shape[:-1]) * Dr * PER_ELEMENT["rotary"])

    def saved(self, f, q, k, **_):
        B, _, T, _ = q
        Dr = self.cfg.rotary_dim or self.cfg.head_dim
        yield Saved("", "cos", B * T * Dr * f)
        yield Saved("", "sin", B * T * Dr * f)

    def backward(self, grad):
        """{"q": dq', "k": dk'} -> (dq, dk); the positions are integers and cos, sin constants."""
        saved = autograd.saved(self)
        cos, sin = saved.taps["cos"], saved.taps["sin"]
        d_q = apply_rotary_backward(saved.tap("q", grad["q"]), cos, sin, self.cfg)     # (B, H, T, Dh)
        d_k = apply_rotary_backward(saved.tap("k", grad["k"]), cos, sin, self.cfg)     # (B, KV, T, Dh)
        return d_q, d_k
