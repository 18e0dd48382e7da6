"""Mirrors `numpy_ref.rotary`.

Differs: the tables are built on the positions' device, in `torch.float64` (the angle first in
`torch.float32` when `rotary_float32`); `dynamic`'s sequence length stays a tensor
(`position_ids.max() + 1`), so nothing leaves the device for it. The position checks are skipped
while `torch.export` traces (`torch.compiler.is_exporting()`), as the embeddings' are.
"""
import math

import torch
from torch import nn

from conformance.core import checks, trace


def power(base, exponent, dtype):
    """base ** exponent in `dtype`, computed in float64 and rounded once: float32 powers are not
    correctly rounded, and libraries round them differently by an ulp."""
    return (torch.as_tensor(base, dtype=torch.float64) ** torch.as_tensor(exponent, dtype=torch.float64)).to(dtype)


def rotary_frequencies(cfg, seq_len):
    """(inverse frequencies theta_i (P,), attention factor) for positions below `seq_len`; with
    `rotary_float32` in float32, in transformers' order of operations (c / x as torch computes it,
    (1 / x) * c), else in float64."""
    dtype = torch.float32 if cfg.rotary_float32 else torch.float64
    Dr = cfg.rotary_dim or cfg.head_dim
    base, factor = cfg.rope_theta, cfg.rope_factor
    original = cfg.rope_original_max_positions or cfg.max_positions
    seq_len = torch.as_tensor(seq_len)
    if cfg.rope_scaling == "dynamic":
        s = torch.clamp(seq_len, min=cfg.max_positions).to(dtype)
        base = base * power(factor * s / cfg.max_positions - (factor - 1), Dr / (Dr - 2), dtype)
    two_i = torch.arange(0, Dr, 2, device=seq_len.device).to(dtype)
    powers = power(base, two_i / Dr, dtype)                                       # (P,) base^(2i / Dr)
    inv_freq = 1 / powers                                                         # (P,)
    if cfg.rope_scaling == "linear":
        return inv_freq / factor, 1.0
    if cfg.rope_scaling == "llama3":
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        wavelength = 2 * math.pi * (1 / inv_freq)                                 # (P,)
        divided = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)  # (P,)
        s = (original * (1 / wavelength) - low) / (high - low)                    # (P,)
        smooth = (1 - s) * divided / factor + s * divided                         # (P,)
        medium = (wavelength >= original / high) & (wavelength <= original / low)  # (P,)
        return torch.where(medium, smooth, divided), 1.0
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
        i = torch.arange(Dr // 2, device=seq_len.device).to(dtype)
        ramp = torch.clamp((i - lo) / (hi - lo), 0, 1)                            # (P,)
        extrapolation = 1 - ramp                                                  # (P,)
        return 1 / (factor * powers) * (1 - extrapolation) + inv_freq * extrapolation, attention
    return inv_freq, 1.0


def rotary_angles(position_ids, inv_freq, cfg):
    """(B, T) positions -> (B, T, Dr) angles m theta_i, in theta's dtype (float32 if `rotary_float32`), laid
    out for `rotary_pairing`: [theta_0 .. theta_P-1, theta_0 .. theta_P-1] for "half", each twice in a
    row for "interleaved"."""
    angles = position_ids[..., None].to(inv_freq.dtype) * inv_freq               # (B, T, P)
    if cfg.rotary_pairing == "half":
        return torch.cat([angles, angles], dim=-1)                                # (B, T, Dr)
    return torch.repeat_interleave(angles, 2, dim=-1)                             # (B, T, Dr)


def rotate(x, pairing):
    """A quarter turn of every pair: (x_a, x_b) -> (-x_b, x_a)."""
    if pairing == "half":
        P = x.shape[-1] // 2
        return torch.cat([-x[..., P:], x[..., :P]], dim=-1)                      # (..., Dr)
    pairs = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1)                    # (..., P, 2)
    return pairs.reshape(x.shape)                                                 # (..., Dr)


def apply_rotary(x, cos, sin, cfg):
    """x (B, heads, T, Dh), cos and sin (B, T, Dr): the first Dr features of each head turned, the rest kept."""
    Dr = cos.shape[-1]
    x_rot, x_pass = x[..., :Dr], x[..., Dr:]                                      # (B, heads, T, Dr)
    turned = x_rot * cos[:, None] + rotate(x_rot, cfg.rotary_pairing) * sin[:, None]  # (B, heads, T, Dr)
    return torch.cat([turned, x_pass], dim=-1)                                    # (B, heads, T, Dh)


class RotaryEmbedding(nn.Module):
    """q (B, H, T, Dh) and k (B, KV, T, Dh) rotated by their positions, position_ids (B, T) ints."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, q, k, position_ids):
        cfg = self.cfg
        checks.rotary_inputs(checks.spec(q), checks.spec(k), checks.spec(position_ids), cfg.head_dim)
        if not torch.compiler.is_exporting():  # a traced position has no value to check
            checks.rotary_positions(int(position_ids.min()), int(position_ids.max()), cfg.max_positions,
                                    cfg.rope_scaling)
        tap = trace.tap_for(self)
        inv_freq, attention = rotary_frequencies(cfg, position_ids.max() + 1)          # (P,)
        angles = rotary_angles(position_ids, inv_freq, cfg).to(torch.float64)          # (B, T, Dr)
        cos = tap("cos", (torch.cos(angles) * attention).to(q.dtype))                  # (B, T, Dr)
        sin = tap("sin", (torch.sin(angles) * attention).to(q.dtype))                  # (B, T, Dr)
        q = tap("q", apply_rotary(q, cos, sin, cfg))                                   # (B, H, T, Dh)
        k = tap("k", apply_rotary(k, cos, sin, cfg))                                   # (B, KV, T, Dh)
        return {"q": q, "k": k}
