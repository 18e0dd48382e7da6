"""The gradient suite proves it can fail: planted backward bugs, each caught and pinned to its op.

Reference-side bugs, planted in numpy_ref's hand-written backward (the forward is untouched, so
the forward suite cannot see them; every twin's gradients then disagree with the reference):
- a softmax backward without its `- sum(p * dp)` term (dx = p * dp): the gradient of `scores`
  leaves tolerance while that of `probs`, one op later in the forward, still agrees;
- a residual whose skip path passes no gradient (dx = f'(x)^T dy, the `dy +` dropped). Where it
  shows first depends on where the skip joins in backward order. Post-norm, y = LN(x + f(x)): the
  feed-forward branch still gets the right gradient, and the first wrong one is its input x, the
  attention sub-block's `attention_norm.output`. Pre-norm, y = x + f(LN(x)): x is the attention
  sub-block's sum x0 + a, so the first wrong one is the attention branch's output
  `attention.output.output`, whose gradient is the gradient at that sum.
Twin-side bug: torch's GELU wrapped in an `autograd.Function` whose backward forgets the
x phi(x) term (GELU treated as a smoothed ReLU, dy = Phi(x) dx): outputs identical, gradients not;
gradient replay names the activation module as the only op that introduces the error.
"""
import math

import numpy as np
import pytest
import torch

import numpy_ref.activations
import numpy_ref.attention
import numpy_ref.blocks
import torch_impl.activations
from conformance.backends.build import build
from conformance.compare.gradients import first_backward_divergence, gradient_rows
from conformance.suites.cases import check_gradients
from conformance.compare.replay import innermost_culprits, replay_gradients
from conformance.suites.cases import case_data, check_case, failure_message


def softmax_without_row_sum(monkeypatch):
    def buggy(grad, probs, mask=None):
        d_x = probs * grad  # the `- (probs * grad).sum(-1)` term dropped
        return d_x if mask is None else np.where(mask, d_x, 0)

    monkeypatch.setattr(numpy_ref.activations, "softmax_backward", buggy)
    monkeypatch.setattr(numpy_ref.attention, "softmax_backward", buggy)


def residual_without_skip(monkeypatch):
    def buggy(grad, sublayer_backward, norm, dropout, norm_first, output_norm=None):
        if norm_first:  # y = x + drop(f(LN(x))): the `grad +` of the skip path dropped
            d_h = dropout.backward(grad)
            return norm.backward(sublayer_backward(d_h if output_norm is None else output_norm.backward(d_h)))
        d_sum = norm.backward(grad)  # y = LN(x + drop(f(x))): the `d_sum +` dropped
        return sublayer_backward(dropout.backward(d_sum))

    monkeypatch.setattr(numpy_ref.blocks, "residual_backward", buggy)


PLANTED = [
    # (bug, registry case, first gradient in backward order out of tolerance, one that still agrees)
    (softmax_without_row_sum, ("multi_head_attention", "default"), "scores", "probs"),
    (softmax_without_row_sum, ("gpt2", "default"), "layers.1.attention.scores", "layers.1.attention.probs"),
    (residual_without_skip, ("encoder_layer", "default"), "attention_norm.output", "feed_forward.inner.output"),
    (residual_without_skip, ("encoder_layer", "pre_norm_causal"), "attention.output.output",
     "feed_forward_norm.output"),
    (residual_without_skip, ("bert", "default"), "encoder.1.attention_norm.output", "encoder.1.feed_forward.output"),
]
IDS = [f"{bug.__name__}-{case[0]}[{case[1]}]" for bug, case, _, _ in PLANTED]


@pytest.mark.parametrize("bug,case,first_op,still_agrees", PLANTED, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_planted_reference_backward_bug_is_caught_and_pinned(monkeypatch, bug, case, first_op, still_agrees, dtype):
    _, cfg, w, inputs, _ = case_data(*case)
    bug(monkeypatch)
    buggy = build("numpy", cfg, w, dtype="float64").gradients(**inputs)

    results = check_gradients(*case, "torch", dtype, reference=buggy)
    assert not all(r.passed for r in results), f"{bug.__name__} went unnoticed"
    assert f" {case[0]}" in failure_message(results) and f"activation {first_op}:" in failure_message(results)

    actual = build("torch", cfg, w, dtype=dtype).gradients(cotangents=buggy.cotangents, **inputs)
    first = first_backward_divergence(buggy, actual, dtype)
    assert first is not None and (first.group, first.op) == ("activation", first_op), f"pinned to {first}"
    rows = {r.op: r for r in gradient_rows(buggy, actual, dtype)}
    assert rows[still_agrees].passed, rows[still_agrees]


class GeluForgettingItsDensity(torch.autograd.Function):
    """Exact GELU forward, backward dy = Phi(x) dx: the x phi(x) term forgotten."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_planted_twin_backward_bug_is_caught_and_replay_names_the_op(monkeypatch, dtype):
    case = ("encoder_layer", "default")  # exact GELU in its feed-forward
    _, cfg, w, inputs, _ = case_data(*case)
    monkeypatch.setitem(torch_impl.activations.ACTIVATIONS, "gelu", GeluForgettingItsDensity.apply)
    buggy = build("torch", cfg, w, dtype=dtype)

    assert all(r.passed for r in check_case(*case, "torch", dtype, built=buggy)), "the forward must be unchanged"
    results = check_gradients(*case, "torch", dtype, built=buggy)
    assert not all(r.passed for r in results), "the wrong GELU backward went unnoticed"
    assert "activation feed_forward.inner.output:" in failure_message(results)

    replayed = replay_gradients("torch", cfg, w, inputs, "*", dtype=dtype, built=buggy)
    assert innermost_culprits(replayed) == ["feed_forward.activation"]
    by_path = {r.path: r for r in replayed}
    assert not by_path["feed_forward.activation"].passed and by_path["feed_forward.outer"].passed
    # layer 0's query projection is downstream in the backward: it inherits, introduces nothing
    query = by_path["attention.query"]
    assert query.passed and query.total > 10 * query.introduced


def test_correct_twins_replay_clean(framework_twins_only, framework):
    """The control: on the unmodified twins every module's backward introduces nothing."""
    _, cfg, w, inputs, _ = case_data("encoder_layer", "default")
    replayed = replay_gradients(framework, cfg, w, inputs, "*", dtype="float32")
    assert {r.path for r in replayed} >= {"", "attention", "attention.query", "feed_forward.activation",
                                          "attention_norm", "feed_forward"}
    assert all(r.passed for r in replayed), [r for r in replayed if not r.passed]
    assert innermost_culprits(replayed) == []
