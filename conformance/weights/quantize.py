"""int8 weights: every Linear's kernel as per-channel symmetric int8, one weight set for every framework.

    cfg8, w8 = weights.quantize_int8(cfg, w)        # int8 kernels + per-channel scales, canonical names
    weights.save(w8, "m-int8.safetensors", cfg8)    # the file's config says weight_quantization="int8"
    m = build("torch", cfg8, w8)                    # numpy, torch, tf: each Linear holds q and s, computes s q

For a kernel W (in, out) (the math layout: torch's [out, in] rows are its columns), output channel j:

    s_j  = max_i |W_ij| / 127                          one float32 scale per output channel, `P.kernel_scale`
    q_ij = clip(round(W_ij / s_j), -127, 127)          int8, symmetric (no zero point: -128 is never used)

so |W_ij - s_j q_ij| <= s_j / 2 for every entry (the rounding's half step; the clip never bites, as
|W_ij| / s_j <= 127), up to the float32 rounding of W_ij / s_j: at most 127 * 2^-24 = 7.6e-6 of a step
(bench/bench_int8.py measures 1.0000066 half-steps at worst, gpt2-tiny). The division is float32 on purpose: it is
onnxruntime's, whose q then equals ours entry for entry (float64 would move 9 of vit-tiny's 5.3M entries
that sit within that rounding of a half). A channel of zeros keeps s_j = 0, q = 0, exactly. `P.kernel` keeps its name and
shape and becomes int8; nothing else changes (embeddings, norms, biases, a tied head's table, ViT's patch
convolution stay float). The quantization is computed once, here in NumPy, so the three frameworks
load the same q and s and compute the same thing: their int8 models agree with the float64 NumPy int8
model under the ordinary float rows, and the int8 model's distance from the float model has a row of
its own (`conformance.compare.tolerance.DEPLOYMENT_TOLERANCES["int8_weights"]`).
"""
from __future__ import annotations

import numpy as np

from conformance.core.config import Config
from conformance.spec import registry
from conformance.weights.canonical import check, int8_kernels

QMAX = 127  # symmetric int8: [-127, 127]
SCALE = "_scale"  # P.kernel -> P.kernel_scale


def quantize_kernel(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 (in, out), s float32 (out,)) of a float kernel (in, out): one scale per output channel."""
    w = np.asarray(kernel, dtype=np.float32)
    scale = (np.abs(w).max(axis=0) / np.float32(QMAX)).astype(np.float32)  # (out,)
    ratio = np.divide(w, scale, out=np.zeros_like(w), where=scale > 0)      # (in, out)
    return np.clip(np.round(ratio), -QMAX, QMAX).astype(np.int8), scale


def quantize_int8(cfg: Config, weights: dict[str, np.ndarray]) -> tuple[Config, dict[str, np.ndarray]]:
    """(cfg with weight_quantization="int8", the int8 weight set) of float weights for `cfg`: every Linear
    kernel `P.kernel` as int8 q plus `P.kernel_scale`, the other tensors as they were (the same arrays)."""
    if not isinstance(cfg, Config):
        raise ValueError(f"cfg must be a Config; received {type(cfg).__name__}")
    if cfg.weight_quantization != "none":
        raise ValueError(f"quantize_int8 takes a float model's Config: expected weight_quantization='none'; "
                         f"received weight_quantization={cfg.weight_quantization!r} (its weights are already int8)")
    if isinstance(weights, dict):
        already = sorted(k for k, v in weights.items() if np.asarray(v).dtype.kind in "iu")
        if already:
            raise ValueError(f"quantize_int8 takes float weights; received integer tensors {already[:3]}"
                             f"{' ...' if len(already) > 3 else ''} (already quantized?)")
    check(cfg, weights)
    quantized = cfg.replace(weight_quantization="int8")
    out = dict(weights)
    for name in int8_kernels(registry.param_shapes(quantized)):  # refuses a model with no Linear
        out[name], out[name + SCALE] = quantize_kernel(weights[name])
    return quantized, out


def dequantize(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float weights an int8 weight set computes with: s q (float32) in place of each int8 kernel, the
    scales dropped (a float model with these weights is the int8 model, up to float rounding)."""
    kernels = int8_kernels(weights)
    out = {k: v for k, v in weights.items() if k not in {name + SCALE for name in kernels}}
    for name in kernels:
        out[name] = weights[name].astype(np.float32) * weights[name + SCALE]
    return out


def weight_bytes(weights: dict[str, np.ndarray], names=None) -> int:
    """Bytes the tensors `names` (default: all) take as stored: int8 one per entry, float32 four."""
    return sum(int(np.asarray(weights[k]).nbytes) for k in (weights if names is None else names))
