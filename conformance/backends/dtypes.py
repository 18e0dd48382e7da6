"""The dtype policy: what a `build(..., dtype=...)` stores its weights in and computes in.

| dtype | weights | compute | outputs | backends |
|---|---|---|---|---|
| float64, float32 | same | same | same | numpy, torch, tf |
| bfloat16, float16 | same | same | same | torch, tf |
| mixed_bfloat16, mixed_float16 | float32 | the low dtype | low or float32 | torch (autocast), tf (Keras policy) |
| tf32 | float32 | matmul operands rounded to TF32 | float32 | torch: cuda, or emulated on cpu |

Each backend declares which of these it runs (`Backend.dtypes`) and why not the others
(`Backend.unsupported`); the functions here are the rules every backend shares.
"""
from __future__ import annotations

import numpy as np

DTYPES = ("float64", "float32", "tf32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
LOW = ("bfloat16", "float16")
MIXED = ("mixed_bfloat16", "mixed_float16")
FLOAT16_MAX = 65504.0


def parameter_dtype(dtype: str) -> str:
    """The dtype weights (and float inputs) are stored in."""
    return "float32" if dtype in MIXED or dtype == "tf32" else dtype


def compute_dtype(dtype: str) -> str:
    return dtype.removeprefix("mixed_") if dtype in MIXED else parameter_dtype(dtype)


def output_dtypes(dtype: str, float64_output: bool = False) -> tuple[str, ...]:
    """The dtypes an output may come back in: autocast keeps some ops (layer norm) in float32."""
    if float64_output:
        return ("float64",)
    if dtype in MIXED:
        return (compute_dtype(dtype), "float32")
    return (parameter_dtype(dtype),)


def numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def cast_input(x, dtype: str):
    """A float input in the dtype the framework is fed (integers and bools unchanged)."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16":
        return x.astype(numpy_dtype(parameter_dtype(dtype)))
    return x


TF32_UNIT_ROUNDOFF = 2.0 ** -11  # 10 stored mantissa bits, round to nearest


def round_to_tf32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (10-bit mantissa, round to nearest even); inf and NaN kept."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    finite = np.isfinite(np.asarray(x, np.float32))
    return np.where(finite, rounded.view(np.float32), np.asarray(x, np.float32))
