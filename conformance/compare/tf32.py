"""TF32 as a named cause: is a failing cross-framework comparison TF32's rounding, or something else?

TF32 (NVIDIA Ampere and later) rounds matmul inputs to a 10-bit mantissa and accumulates in
float32. TensorFlow enables it by default on such GPUs; PyTorch does not for matmuls
(`torch.backends.cuda.matmul.allow_tf32 = False`, precision "highest") but does for cuDNN
convolutions. Each backend's `environment()` records its flags (`*_tf32_effective`);
`tf32_cause` names TF32 as the cause of a failing comparison when the flags differ and the
error looks like it. In this harness torch float32 on cuda runs with TF32 forced off, and
dtype "tf32" forced on (`conformance.backends.torch_backend`).
"""
from __future__ import annotations

import math
import re

from conformance.backends.dtypes import TF32_UNIT_ROUNDOFF

MATMUL_TAPS = {"scores", "context", "logits", "start_logits", "end_logits", "pooled"}
LINEAR_PATHS = {"query", "key", "value", "output", "inner", "outer", "transform", "pooler", "classifier",
                "qa", "output_projection"}


def is_matmul_op(name: str) -> bool:
    """Is the traced op `name` the result of a matmul (where TF32 rounds), by its tap name?"""
    name = re.sub(r"#\d+$", "", name)
    path, _, tap = name.rpartition(".")
    return tap in MATMUL_TAPS or (tap == "output" and path.rpartition(".")[2] in LINEAR_PATHS)


def tf32_cause(flags: dict, failing) -> str | None:
    """Name TF32 as the cause of a failing comparison between two runs, or say why not.

    flags: {run label: TF32 on?} for the two runs, e.g. {"tf": True, "torch": False} (from
    `precision_environment()`'s `*_tf32_effective`). failing: a `Comparison`, or the per-op
    comparisons of a trace in execution order. Returns None when TF32 cannot be involved
    (off in both runs, or nothing failed).
    """
    comparisons = failing if isinstance(failing, (list, tuple)) else [failing]
    first = next((c for c in comparisons if not c.passed), None)
    on = [label for label, flag in flags.items() if flag]
    off = [label for label, flag in flags.items() if not flag]
    if first is None or not on:
        return None
    pattern = _tf32_pattern(first)
    if off:
        state = f"TF32 on in {', '.join(on)}, off in {', '.join(off)}"
        if pattern is None:
            scale = getattr(first, "scale", float("nan"))
            size = f"max-norm rel {first.max_abs / scale:.1e}" if scale > 0 else f"max rel {first.max_rel:.1e}"
            return (f"{state}: matmul inputs rounded to 10-bit mantissa; first divergence at {first.name} "
                    f"({size}) matches TF32 rounding (unit roundoff {TF32_UNIT_ROUNDOFF:.1e} at a matmul): "
                    f"turn TF32 off in {', '.join(on)} to confirm")
        return f"{state}, but the error does not look like TF32 ({pattern}): look for another cause"
    return (f"TF32 on in both ({', '.join(on)}): each rounds matmul inputs to a 10-bit mantissa, so "
            f"compare each against the float64 reference with the tf32 row"
            + ("" if pattern is None else f"; the error does not look like TF32 either ({pattern})"))


def _tf32_pattern(c) -> str | None:
    """None if comparison `c` looks like TF32 rounding, else what does not fit.

    At the first op it reaches, TF32 moves a matmul's result by about its unit roundoff times a
    small factor, relative to the tensor's scale: between 1e-6 and 5e-2 of max |reference|
    (the comparison's elementwise max_rel when the scale is unknown). A real bug there (a
    transposed kernel, a missing scale, a shifted mask) moves it by order one.
    """
    if not math.isfinite(c.max_abs):
        return f"non-finite values at {c.name}"
    if not is_matmul_op(c.name):
        return f"first divergence at {c.name}, not the output of a matmul"
    scale = getattr(c, "scale", float("nan"))
    rel, what = (c.max_abs / scale, "max-norm rel") if scale > 0 else (c.max_rel, "max rel")
    if rel > 5e-2:
        return f"{what} {rel:.1e} at {c.name}, far above TF32 rounding"
    if rel < 1e-6:
        return f"{what} {rel:.1e} at {c.name}, far below TF32 rounding"
    return None
