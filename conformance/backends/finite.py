"""Non-finite values are never handed back silently: a run whose outputs go inf or NaN from finite
inputs raises `NonFiniteError` naming the first op that did, in every dtype (float16 overflows past
65504, bfloat16 and float32 past 3.4e38, float64 past 1.8e308; NaN also comes from inf - inf or a
variance that overflowed). Inputs are refused before that, by the front door (`checks.inputs`).
`build(..., check_finite=False)` turns both off."""
from __future__ import annotations

import numpy as np

from conformance.backends.dtypes import FLOAT16_MAX, compute_dtype
from conformance.core import trace


class NonFiniteError(ValueError):
    """A run produced inf/NaN from finite inputs: names the first op it happened at."""

    def __init__(self, message, op=None, count=0):
        super().__init__(message)
        self.op, self.count = op, count


def nonfinite_count(record) -> int:
    if hasattr(record, "nonfinite"):  # trace.Summary
        return int(record.nonfinite)
    a = np.asarray(record)
    if a.dtype.kind not in "fc" and a.dtype.name != "bfloat16":
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def traced(built, inputs: dict) -> tuple[dict, dict]:
    """`built.trace(**inputs)` for any input names (`Built.trace`'s own keywords would swallow
    inputs named like them), with the same overflow check."""
    with trace.recording(built.backend.named_modules(built.module), built.backend.to_numpy) as t:
        out = built(**inputs)
    check_finite(built, inputs, out, t.records)
    return out, t.records


def first_nonfinite(trace_records: dict) -> tuple[str, int] | None:
    """(op name, count of non-finite values) of the first record, in execution order, holding
    inf or NaN; None if every record is finite."""
    for name, record in trace_records.items():
        count = nonfinite_count(record)
        if count:
            return name, count
    return None


def _abs_max(record) -> float:
    if hasattr(record, "abs_max"):
        return float(record.abs_max)
    a = np.asarray(record).astype(np.float64)
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0


# dtype -> (its largest finite value, what to run in instead)
RANGES = {"float16": (FLOAT16_MAX, "bfloat16 or float32"), "bfloat16": (3.39e38, "float32"),
          "float32": (3.40e38, "float64"), "float64": (1.79e308, "")}


def check_finite(built, inputs: dict, outputs: dict, records: dict | None = None) -> None:
    """Raise `NonFiniteError` if a run turned finite inputs into inf/NaN outputs.

    Without `records` (an untraced call) the call is re-run traced to find the op; inside a
    trace the enclosing `Built.trace` passes its records.
    """
    dtype = compute_dtype(built.dtype)
    if not getattr(built, "check_finite", True):
        return
    bad = {k: nonfinite_count(v) for k, v in outputs.items()}
    bad = {k: n for k, n in bad.items() if n}
    if not bad or any(nonfinite_count(v) for v in inputs.values()):
        return
    if records is None:
        if trace._active is not None:
            return  # the enclosing trace checks, with its records
        traced(built, inputs)  # raises below, with the records
        records = {}
    hit = first_nonfinite(records)
    names = list(records)
    where = "an op the trace does not tap"
    if hit:
        where = f"{hit[0]} ({hit[1]} values)"
        before = names[names.index(hit[0]) - 1] if names.index(hit[0]) else None
        if before:
            where += f"; the op traced before it, {before}, reached |x| = {_abs_max(records[before]):.3g}"
    limit, instead = RANGES.get(dtype, RANGES["float32"])
    advice = f"run in {instead}, or rescale the inputs" if instead else "rescale the inputs"
    raise NonFiniteError(
        f"{built.framework} {built.dtype}: {sum(bad.values())} non-finite values in outputs "
        f"{sorted(bad)} from finite inputs; first non-finite op: {where}. Overflow past {dtype} max {limit:g} "
        f"(or NaN from inf - inf): {advice}; build(..., check_finite=False) hands them back",
        hit[0] if hit else None, hit[1] if hit else 0)
