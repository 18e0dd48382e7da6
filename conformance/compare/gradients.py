"""Gradient conformance: every framework's backward against the NumPy reference's.

The loss. A case's outputs out_k each get a seeded standard-normal cotangent c_k of the same
shape, and

    L = sum_k sum(out_k * c_k)        so  dL/d out_k = c_k,

which makes every gradient below a vector-Jacobian product c^T J: exactly what a backward
pass computes, fed a chosen cotangent. Why a random c and not L = sum(out) (c = ones):
- a wrong Jacobian J' goes unnoticed only if c^T (J' - J) = 0, which for a random Gaussian c
  happens with probability zero, so every gradient path is tested;
- ones are blind by construction where the math is symmetric: softmax rows sum to 1, so
  d sum(softmax(x)) / dx = 0 and everything upstream of a softmax would get an all-zero
  gradient that any bug in it reproduces; a layer norm's centred output sums to zero over its
  features the same way; and a transposed or permuted gradient of a sum of ones looks the same.

What is compared, per case: the gradient of L with respect to every floating input, every
weight (canonical name and `[in, out]` layout, mapped back from torch's `[out, in]` in
`conformance.weights.mapping`, the one place that knows it), and every traced activation (the same
keys as `Built.trace`, '#k' for a module's k-th call): "the total gradient w.r.t. that tensor".
How each framework gets them:
- numpy: `numpy_ref.autograd`, the hand-written backward, run in float64: the reference.
- torch: autograd. A tap (`trace.Tracer.on_tap`) registers `tensor.register_hook` on every
  tapped tensor that requires grad, so the hook receives that tensor's accumulated gradient.
- tf: one `tf.GradientTape`, watching the float inputs; the Keras variables and the tapped
  tensors (intermediate tensors recorded on the tape) are the targets of `tape.gradient`.
A tapped tensor that depends on no float input or weight (the sinusoidal encoding, rotary's cos
and sin: the reference module's `constant_taps`, `numpy_ref.autograd.constant_keys`) has no
gradient in any framework and is left out; an entry whose output is such a constant declares
`differentiable=False` in the registry.

Tolerances (`conformance.compare.tolerance.gradient_tolerance`) bound each tensor's max-norm relative
error |a - r| <= scale_rtol max |r| (+ a tiny atol for all-zero tensors): a weight's gradient is
a sum over batch and positions whose terms may cancel to near zero, so an elementwise relative
error means nothing there, while the error of the sum stays proportional to the size of the
terms, which max |r| measures.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from conformance.backends import Gradients, build
from conformance.compare.tolerance import Comparison, compare, gradient_tolerance
from conformance.core.config import ATTENTION_IMPLS


# ------------------------------------------------------------------------------------ comparing

def _affine_scale(name: str, grads: dict) -> float | None:
    """A bias is the kernel's row for a constant-1 input feature (y = [x, 1] @ [kernel; bias]), so a
    Linear's [kernel; bias] gradient is compared as one tensor, on one scale. This matters for the key
    projection's bias: it adds q . b to every score of a query's row, which the softmax (shift-invariant
    along the keys) cancels, so its gradient is exactly zero and its computed value pure roundoff."""
    path, _, leaf = name.rpartition(".")
    kernel = f"{path}.kernel" if path else "kernel"
    if leaf != "bias" or kernel not in grads:
        return None
    return max(float(np.abs(grads[name]).max(initial=0.0)), float(np.abs(grads[kernel]).max(initial=0.0)))


def compare_gradient(name: str, actual, reference, tol, scale: float | None = None) -> Comparison:
    """`tolerance.compare` with the gradient row; `scale` (if larger) replaces the tensor's max |reference|."""
    c = compare(name, actual, reference, tol)
    if scale is None or not np.isfinite(c.max_abs) or not scale > c.scale:
        return c
    passed = c.max_abs <= tol.atol + tol.scale_rtol * scale
    return replace(c, max_rel=c.max_abs / scale, passed=passed, scale=scale,
                   detail=f"on the scale of the layer's [kernel; bias] gradient, {scale:.3g}")


@dataclass(frozen=True)
class GradientRow:
    """One tensor's gradient error: `op` is a trace key (group "activation"), a canonical weight
    name ("param") or an input name ("input"); `scale_error` is max |a - r| / max |r|."""
    op: str
    group: str
    result: Comparison

    @property
    def max_abs(self) -> float:
        return self.result.max_abs

    @property
    def scale_error(self) -> float:
        return self.result.max_rel

    @property
    def passed(self) -> bool:
        return self.result.passed


def backward_order(reference: Gradients) -> list[tuple[str, str]]:
    """(group, name) in the order a backward pass produces the gradients: the traced activations
    last to first (the reverse of the forward trace), each weight right after the first activation
    of its module in that order (its module's output: the weight's gradient needs it), the inputs last."""
    acts = list(reversed(list(reference.activations)))
    placed = {a: [] for a in acts}
    unplaced = []
    for name in reference.params:
        path = name.rpartition(".")[0]
        owner = next((a for a in acts if not path or a.startswith(path + ".")), None)
        (placed[owner] if owner else unplaced).append(name)
    order = []
    for a in acts:
        order += [("activation", a)] + [("param", p) for p in placed[a]]
    return order + [("param", p) for p in unplaced] + [("input", k) for k in reference.inputs]


def gradient_rows(reference: Gradients, actual: Gradients, dtype: str, absent=()) -> list[GradientRow]:
    """Every gradient's error in backward order, then any gradient present on one side only.
    `absent`: activation keys the framework is declared not to trace (torch's fused attention)."""
    tol = gradient_tolerance(dtype)
    rows = []
    for group, key in backward_order(reference):
        if group == "activation" and key in absent:
            continue
        got, want = actual.groups()[group], reference.groups()[group]
        if key not in got:
            rows.append(GradientRow(key, group, Comparison(key, np.inf, np.inf, (), False, "missing gradient")))
        else:
            scale = _affine_scale(key, want) if group == "param" else None
            rows.append(GradientRow(key, group, compare_gradient(key, got[key], want[key], tol, scale)))
    for group, got in actual.groups().items():
        for key in got:
            if key not in reference.groups()[group]:
                rows.append(GradientRow(key, group, Comparison(key, np.inf, np.inf, (), False, "unexpected gradient")))
            elif group == "activation" and key in absent:
                rows.append(GradientRow(key, group, Comparison(key, np.inf, np.inf, (), False,
                                                               "declared untraced, yet present")))
    return rows


def first_backward_divergence(reference: Gradients, actual: Gradients, dtype: str, absent=()) -> GradientRow | None:
    """The first gradient, in backward order, that leaves tolerance; None if all agree."""
    return next((r for r in gradient_rows(reference, actual, dtype, absent) if not r.passed), None)


def absent_activations(cfg, keys) -> set:
    """The trace keys `cfg`'s attention implementation does not record (`ATTENTION_IMPLS`): a fused
    attention runs q k^T -> softmax -> @ v inside one call, so there are no scores or probs to tap."""
    untapped = ATTENTION_IMPLS[cfg.attention_impl]
    return {k for k in keys if k.rpartition(".")[2].split("#")[0] in untapped}


def gradient_report(cfg, w: dict, inputs: dict, frameworks=("torch", "tf"), dtype: str = "float32",
                    seed: int = 0, reference: Gradients | None = None) -> dict[str, list[dict]]:
    """Per-op gradient error for reports (`tmirror report --train`): framework -> rows in backward
    order, each {"op", "group", "max_abs", "scale_error", "passed"}, against the float64 NumPy backward
    of L = sum_k sum(out_k * c_k) with seeded standard-normal c_k (`seed`); pass `reference` (that
    backward, already computed) to report several dtypes against one reference run."""
    gradient_tolerance(dtype)  # a dtype with no gradient row is refused before any work
    reference = reference or build("numpy", cfg, w, dtype="float64").gradients(seed=seed, **inputs)
    report = {}
    for framework in frameworks:
        actual = build(framework, cfg, w, dtype=dtype).gradients(cotangents=reference.cotangents, **inputs)
        rows = gradient_rows(reference, actual, dtype, absent_activations(cfg, reference.activations))
        report[framework] = [{"op": r.op, "group": r.group, "max_abs": r.max_abs, "scale_error": r.scale_error,
                              "passed": r.passed} for r in rows]
    return report
