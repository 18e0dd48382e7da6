"""Mirrors `numpy_ref.rotary`.

Differs: written with `keras.ops`, the tables in float64 (the angle first in float32 when
`rotary_float32`); `dynamic`'s sequence length stays a tensor (`ops.max(position_ids) + 1`), so the
layer traces under `tf.function`. The position checks run only on concrete tensors
(`tf_impl._layer.is_symbolic`), as the embeddings' do. Positions are not autocast (`autocast` only
touches floating inputs): they reach `call` as the integers they are.
"""
import math

from keras import ops

from conformance.core import checks, trace
from tf_impl._layer import Layer, is_symbolic


def power(base, exponent, dtype):
    """base ** exponent in `dtype`, computed in float64 and rounded once: float32 powers are not
    correctly rounded, and libraries round them differently by an ulp."""
    return ops.cast(ops.power(ops.convert_to_tensor(base, "float64"), ops.convert_to_tensor(exponent, "float64")),
                    dtype)


def rotary_frequencies(cfg, seq_len):
    """(inverse frequencies theta_i (P,), attention factor) for positions below `seq_len`; with
    `rotary_float32` in float32, in transformers' order of operations (c / x as torch computes it,
    (1 / x) * c), else in float64."""
    dtype = "float32" if cfg.rotary_float32 else "float64"
    Dr = cfg.rotary_dim or cfg.head_dim
    base, factor = cfg.rope_theta, cfg.rope_factor
    original = cfg.rope_original_max_positions or cfg.max_positions
    if cfg.rope_scaling == "dynamic":
        s = ops.cast(ops.maximum(seq_len, cfg.max_positions), dtype)
        base = base * power(factor * s / cfg.max_positions - (factor - 1), Dr / (Dr - 2), dtype)
    two_i = ops.cast(ops.arange(0, Dr, 2), dtype)
    powers = power(base, two_i / Dr, dtype)                                       # (P,) base^(2i / Dr)
    inv_freq = 1 / powers                                                         # (P,)
    if cfg.rope_scaling == "linear":
        return inv_freq / factor, 1.0
    if cfg.rope_scaling == "llama3":
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        wavelength = 2 * math.pi * (1 / inv_freq)                                 # (P,)
        divided = ops.where(wavelength > original / low, inv_freq / factor, inv_freq)  # (P,)
        s = (original * (1 / wavelength) - low) / (high - low)                    # (P,)
        smooth = (1 - s) * divided / factor + s * divided                         # (P,)
        medium = (wavelength >= original / high) & (wavelength <= original / low)  # (P,)
        return ops.where(medium, smooth, divided), 1.0
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
        i = ops.cast(ops.arange(Dr // 2), dtype)
        ramp = ops.clip((i - lo) / (hi - lo), 0, 1)                               # (P,)
        extrapolation = 1 - ramp                                                  # (P,)
        return 1 / (factor * powers) * (1 - extrapolation) + inv_freq * extrapolation, attention
    return inv_freq, 1.0


def rotary_angles(position_ids, inv_freq, cfg):
    """(B, T) positions -> (B, T, Dr) angles m theta_i, in theta's dtype (float32 if `rotary_float32`), laid
    out for `rotary_pairing`: [theta_0 .. theta_P-1, theta_0 .. theta_P-1] for "half", each twice in a
    row for "interleaved"."""
    angles = ops.cast(position_ids, inv_freq.dtype)[..., None] * inv_freq        # (B, T, P)
    if cfg.rotary_pairing == "half":
        return ops.concatenate([angles, angles], axis=-1)                         # (B, T, Dr)
    return ops.repeat(angles, 2, axis=-1)                                         # (B, T, Dr)


def rotate(x, pairing):
    """A quarter turn of every pair: (x_a, x_b) -> (-x_b, x_a)."""
    if pairing == "half":
        P = x.shape[-1] // 2
        return ops.concatenate([-x[..., P:], x[..., :P]], axis=-1)               # (..., Dr)
    pairs = ops.stack([-x[..., 1::2], x[..., 0::2]], axis=-1)                     # (..., P, 2)
    return ops.reshape(pairs, ops.shape(x))                                       # (..., Dr)


def apply_rotary(x, cos, sin, cfg):
    """x (B, heads, T, Dh), cos and sin (B, T, Dr): the first Dr features of each head turned, the rest kept."""
    Dr = cos.shape[-1]
    x_rot, x_pass = x[..., :Dr], x[..., Dr:]                                      # (B, heads, T, Dr)
    turned = x_rot * cos[:, None] + rotate(x_rot, cfg.rotary_pairing) * sin[:, None]  # (B, heads, T, Dr)
    return ops.concatenate([turned, x_pass], axis=-1)                             # (B, heads, T, Dh)


class RotaryEmbedding(Layer):
    """q (B, H, T, Dh) and k (B, KV, T, Dh) rotated by their positions, position_ids (B, T) ints."""

    def __init__(self, cfg, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg

    def call(self, q, k, position_ids):
        cfg = self.cfg
        checks.rotary_inputs(checks.spec(q), checks.spec(k), checks.spec(position_ids), cfg.head_dim)
        if not is_symbolic(position_ids):  # a traced position has no value to check
            checks.rotary_positions(int(ops.min(position_ids)), int(ops.max(position_ids)), cfg.max_positions,
                                    cfg.rope_scaling)
        tap = trace.tap_for(self)
        inv_freq, attention = rotary_frequencies(cfg, ops.max(position_ids) + 1)       # (P,)
        angles = ops.cast(rotary_angles(position_ids, inv_freq, cfg), "float64")       # (B, T, Dr)
        cos = tap("cos", ops.cast(ops.cos(angles) * attention, q.dtype))               # (B, T, Dr)
        sin = tap("sin", ops.cast(ops.sin(angles) * attention, q.dtype))               # (B, T, Dr)
        q = tap("q", apply_rotary(q, cos, sin, cfg))                                   # (B, H, T, Dh)
        k = tap("k", apply_rotary(k, cos, sin, cfg))                                   # (B, KV, T, Dh)
        return {"q": q, "k": k}
