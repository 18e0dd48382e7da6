"""The records a component's cost formulas yield, and the constants they count with.

Every numpy_ref module declares its costs next to its math, as functions of its config and of
its forward's argument shapes (each a shape tuple, or None for an argument left out):

    flops(**shapes)            -> Ops: the forward's arithmetic, op by op
    saved(f, **shapes)         -> Saved: the tensors autograd keeps for backward (f bytes a float)
    peak(f, live, **shapes)    -> int: the bytes alive at once in a forward without autograd

A container yields its children's costs, `scoped` under their attribute names, so a model's
cost is the sum over its module tree (`conformance.costs` collapses the layers of a stack).

Convention: one multiply-add is 2 FLOPs, so x (M, K) @ w (K, N) costs 2 M K N; everything else
is counted per element (`PER_ELEMENT`), with exp, erf, tanh and sqrt one FLOP each. Not counted:
embedding lookups (a gather), dropout (the identity at inference), building masks (booleans),
the sinusoidal table (O(T D), no weights), the rotary cos and sin tables (O(T Dr), no weights).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator

PER_ELEMENT = {
    "bias": 1, "residual": 1, "embedding_add": 1, "embedding_scale": 1, "tanh": 1,
    "scale": 1,       # scores * 1/sqrt(Dh)
    "position_bias": 1,  # scores + bias (T5's relative position bias)
    "mask": 1,        # where(mask, scores, fill)
    "softcap": 3,     # cap tanh(x / cap): divide, tanh, multiply
    "softmax": 5,     # max, subtract, exp, sum, divide (TensorFlow's profiler counts 5 too)
    "layer_norm": 7,  # mean, subtract, square, variance sum, divide by std, * gamma, + beta
    "gelu": 5,        # 0.5 x (1 + erf(x / sqrt 2)): divide, erf, add, two multiplies
    "gelu_tanh": 9,   # 0.5 x (1 + tanh(c (x + 0.044715 x^3))): x^3 (2), 3 mul, 2 add, tanh, 0.5 *
    "relu": 1,
    "silu": 4,        # x sigmoid(x) = x / (1 + exp(-x)): negate, exp, add, divide
    "rms_norm": 4,    # square, sum, divide by the rms, * (offset + gamma)
    "gate": 1,        # act(x W_gate) * (x W_up): the gated feed-forward's product
    "rotary": 3,      # x cos + rotate(x) sin: two multiplies and an add (rotate moves a sign: not counted)
}
LAYER_NORM_PER_ROW = 4  # two divides by D, + eps, sqrt
RMS_NORM_PER_ROW = 3    # the divide by D, + eps, sqrt
CATEGORIES = ("projection", "attention", "softmax", "norm", "activation", "elementwise")
MATMUL = ("projection", "attention")
BOOL = 1  # bytes of a mask element
INDEX = 8  # bytes of an int64 id


@dataclass(frozen=True)
class Op:
    name: str          # "encoder.*.attention.scores": `*` marks an op repeated in every layer
    category: str      # one of CATEGORIES
    flops: int         # one instance
    count: int = 1     # instances (layers)
    pairs: bool = False   # score-shaped, (B, H, T, S): grows with T S
    causal: bool = False  # inside causal self-attention: a skipping kernel needs half

    @property
    def total(self) -> int:
        return self.flops * self.count


@dataclass(frozen=True)
class Saved:
    name: str          # the module that keeps it, e.g. "encoder.*.attention"
    tensor: str        # what it is, e.g. "softmax output"
    bytes: int


def scoped(prefix: str, records: Iterable) -> Iterator:
    """A child's `Op`s or `Saved`s named under its attribute path."""
    for r in records:
        yield replace(r, name=f"{prefix}.{r.name}" if r.name else prefix)


def elements(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def rows(shape) -> int:
    """Positions of a (..., D) tensor: every axis but the last."""
    return elements(shape[:-1])
