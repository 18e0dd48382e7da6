"""The hand-written backward of `numpy_ref` (`numpy_ref.autograd`) against central finite
differences, in float64, for every registry case.

For a case with outputs out_k and a seeded random cotangent c_k per output,
L = sum_k sum(out_k * c_k), and for any tensor a (a weight, a float input, a tapped
activation) and direction d,

    dL/da . d  ~  (L(a + h d) - L(a - h d)) / (2h),      h = 1e-6.

Checked per tensor: up to 8 random single coordinates (d one-hot; 3 for the models, whose
~50-90 tensors each cost two forwards a coordinate) and one random direction over the
whole tensor (every entry at once).

Why a relative bound of 1e-6. The central difference is off by O(h^2 L''') ~ 1e-12
(truncation) plus the rounding of L, about eps * sum|out_k * c_k| / h ~ 1e-10 times the
size of L's terms. A wrong gradient (a missing term, a transposed factor, a wrong scale)
is off by O(1) relatively. 1e-6 sits orders of magnitude from both. The rounding part is
absolute, not relative: a gradient that is exactly 0 (the attention key bias, a dropped
unit, a masked score) is matched against FD noise of about 1e-9, so the bound is
1e-6 |analytic| + NOISE * eps * sum|out_k * c_k| / h.
"""
from contextlib import contextmanager

import numpy as np
import pytest

from conformance.core import dropout_masks, trace
from conformance.spec import registry
from conformance import weights
from conformance.backends.build import build
from numpy_ref import autograd
from numpy_ref.embeddings import embedding_backward

H = 1e-6
RTOL = 1e-6
NOISE = 100  # rounding of L in units of eps * sum|terms|: L is a sum of many rounded products
COORDINATES = {False: 8, True: 3}  # per tensor, by Entry.is_model

# fused_attention changes torch_impl only (Variant.frameworks): in numpy it is the default case again
CASES = [(e.name, v) for e in registry.ENTRIES.values() for v, var in e.variants.items()
         if var.frameworks is None or "numpy" in var.frameworks]
IDS = [n if v == "default" else f"{n}[{v}]" for n, v in CASES]


def setup(name, variant, seed=0):
    """A tiny float64 model of the case, its inputs (batch 2, length 4) and a seeded cotangent."""
    entry = registry.get(name)
    cfg = entry.config(variant)
    # std 0.5 for components, 0.1 for models: large enough for softmax and GELU to be nonlinear
    w = weights.initialize(cfg, seed=seed, std=0.5 if not entry.is_model else 0.1)
    model = build("numpy", cfg, w, dtype="float64").module.train(entry.training)
    inputs = entry.inputs(cfg, variant, seed=seed, batch=2, length=4)
    out = model(**inputs)
    rng = np.random.default_rng(seed + 1)
    cotangent = ({k: rng.standard_normal(v.shape) for k, v in out.items()} if isinstance(out, dict)
                 else rng.standard_normal(out.shape))
    return entry, model, inputs, cotangent


def loss(out, cotangent):
    """(L, sum of |terms|): L = sum_k sum(out_k * c_k)."""
    pairs = [(out[k], cotangent[k]) for k in out] if isinstance(out, dict) else [(out, cotangent)]
    return sum(float((o * c).sum()) for o, c in pairs), sum(float(np.abs(o * c).sum()) for o, c in pairs)


def recorded(model, inputs, cotangent):
    with autograd.recording(model) as tape:
        model(**inputs)
    return tape, tape.backward(cotangent)


def central_difference(run, a, d):
    """(L(a + h d) - L(a - h d)) / 2h, moving the array `a` in place (and putting it back)."""
    original = a.copy()
    a += H * d
    plus = run()
    a[...] = original - H * d
    minus = run()
    a[...] = original
    return (plus - minus) / (2 * H)


def directions(a, rng, coordinates):
    """Up to `coordinates` one-hot directions, then one random direction over the whole tensor."""
    for i in rng.choice(a.size, min(coordinates, a.size), replace=False):
        d = np.zeros(a.size)
        d[i] = 1.0
        yield f"[{np.unravel_index(i, a.shape)}]", d.reshape(a.shape)
    yield "[random direction]", rng.standard_normal(a.shape)


def check_tensor(label, a, grad, run, noise, rng, coordinates) -> float:
    """Compare `grad` (dL/da) with central differences; return the worst relative error."""
    assert grad.shape == a.shape, f"{label}: gradient shape {grad.shape}, tensor shape {a.shape}"
    worst = 0.0
    for where, d in directions(a, rng, coordinates):
        analytic, numeric = float((grad * d).sum()), central_difference(run, a, d)
        error = abs(analytic - numeric)
        assert error <= RTOL * abs(analytic) + noise, (
            f"{label}{where}: analytic {analytic:.10g}, finite difference {numeric:.10g}, "
            f"error {error:.3g} > {RTOL} * |analytic| + noise {noise:.3g}")
        worst = max(worst, error / max(abs(analytic), noise / RTOL))
    return worst


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_weight_and_input_gradients_match_finite_differences(case):
    check_against_finite_differences(*case)


def check_against_finite_differences(name, variant):
    entry, model, inputs, cotangent = setup(name, variant)
    tape, grads_in = recorded(model, inputs, cotangent)
    floats = {k for k, v in inputs.items() if np.issubdtype(v.dtype, np.floating)}
    assert set(grads_in) == floats  # every floating input, no ids, masks or keep masks
    params = dict(model.named_parameters())
    assert {k: v.shape for k, v in tape.param_grads.items()} == {k: v.shape for k, v in params.items()}
    if not entry.differentiable:  # declared in the registry: a constant of integer positions
        assert not grads_in and not tape.param_grads and not tape.activation_grads
        return
    run = lambda: loss(model(**inputs), cotangent)[0]  # noqa: E731
    noise = NOISE * np.finfo(np.float64).eps * loss(model(**inputs), cotangent)[1] / H
    rng = np.random.default_rng(2)
    coordinates = COORDINATES[entry.is_model]
    for name, a in params.items():
        check_tensor(name, a, tape.param_grads[name], run, noise, rng, coordinates)
    for name in grads_in:
        check_tensor(f"input {name}", inputs[name], grads_in[name], run, noise, rng, coordinates)


class Perturbing(trace.Tracer):
    """A trace whose tap at `key` returns the tensor moved by `delta`: the rest of the forward
    computes with the moved value, so L(delta) differentiates the tapped tensor itself."""

    def __init__(self, model, key, delta):
        super().__init__(model.named_modules(), np.asarray)
        self.key, self.delta = key, delta

    def scope(self, module):
        record = super().scope(module)

        def tap(name, x):
            record(name, x)
            return x + self.delta if next(reversed(self.records)) == self.key else x

        return tap


@contextmanager
def perturbing(model, key, delta):
    trace._active = Perturbing(model, key, delta)
    try:
        yield
    finally:
        trace._active = None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_activation_gradients_are_the_trace_keys_and_match_finite_differences(case):
    entry, model, inputs, cotangent = setup(*case)
    tape, _ = recorded(model, inputs, cotangent)
    with trace.recording(model.named_modules(), np.asarray) as forward:  # what Built.trace records
        model(**inputs)
    records = forward.records
    # the one exclusion: constants (the sinusoidal encoding, rotary's cos and sin: integer positions, no weights)
    constant = set(autograd.constant_keys(model, records))
    expected = {k for k, v in records.items() if np.issubdtype(v.dtype, np.floating) and k not in constant}
    assert list(tape.activation_grads) == [k for k in records if k in expected]  # the trace's order
    noise = NOISE * np.finfo(np.float64).eps * loss(model(**inputs), cotangent)[1] / H
    rng = np.random.default_rng(3)
    for key, grad in tape.activation_grads.items():
        assert grad.shape == records[key].shape, key
        d = rng.standard_normal(grad.shape)

        def run(delta):
            with perturbing(model, key, delta):
                return loss(model(**inputs), cotangent)[0]

        analytic, numeric = float((grad * d).sum()), (run(H * d) - run(-H * d)) / (2 * H)
        assert abs(analytic - numeric) <= RTOL * abs(analytic) + noise, (key, analytic, numeric)


# ------------------------------------------------------------------ training-mode dropout

def dropout_modules(model):
    return [m for _, m in model.named_modules() if type(m).__name__ == "Dropout"]


@pytest.mark.parametrize("masks", ["supplied", "drawn"])
def test_training_dropout_backward_drops_the_forward_units(masks):
    """An encoder layer in training (rate 0.25): the keep masks come from the shared provider
    (`dropout_masks.supplying`) or from each Dropout's own generator; either way backward
    uses the mask its forward drew (the generators are reseeded so FD sees the same masks)."""
    _, model, inputs, cotangent = setup("encoder_layer", "default")
    model.train(True)
    for m in dropout_modules(model):
        m.rate = 0.25

    def forward():
        if masks == "supplied":
            with dropout_masks.supplying(model.named_modules(), seed=0, step=0):
                return model(**inputs)
        for i, m in enumerate(dropout_modules(model)):
            m.rng = np.random.default_rng(i)
        return model(**inputs)

    with autograd.recording(model) as tape:
        forward()
    grads_in = tape.backward(cotangent)
    assert "feed_forward.dropout.output" in tape.activation_grads  # dropout ran, in training
    run = lambda: loss(forward(), cotangent)[0]  # noqa: E731
    noise = NOISE * np.finfo(np.float64).eps * loss(forward(), cotangent)[1] / H
    rng = np.random.default_rng(4)
    for name, a in model.named_parameters():
        check_tensor(name, a, tape.param_grads[name], run, noise, rng, 3)
    check_tensor("input x", inputs["x"], grads_in["x"], run, noise, rng, 8)


# ------------------------------------------------------------------ facts the derivations state

def test_repeated_ids_accumulate():
    """Id 3 at three positions: its row gets the sum of the three gradients (np.add.at);
    fancy-index += would keep only one of them."""
    ids = np.array([[3, 1, 3, 3]])
    grad = np.arange(8.0).reshape(1, 4, 2)
    d_table = embedding_backward(grad, ids, num=5)
    np.testing.assert_array_equal(d_table[3], grad[0, 0] + grad[0, 2] + grad[0, 3])
    np.testing.assert_array_equal(d_table[1], grad[0, 1])
    assert not d_table[[0, 2, 4]].any()


def test_masked_scores_and_fully_masked_rows_get_zero_gradient():
    entry, model, inputs, cotangent = setup("softmax", "fill_inf")  # -inf fill, one fully masked row
    tape, grads_in = recorded(model, inputs, cotangent)
    d_scores = grads_in["scores"]
    mask = np.broadcast_to(inputs["mask"], d_scores.shape)
    assert not d_scores[~mask].any()
    assert not d_scores[0, :, 1].any()  # the row with nothing to attend to
    assert np.isfinite(d_scores).all() and d_scores[mask].any()


def test_attention_key_bias_gets_no_gradient():
    """The key bias b adds q . b to every score of a query's row; softmax ignores a shift of a
    whole row, so dL/db_key is 0 (up to rounding) while the other biases are not."""
    _, model, inputs, cotangent = setup("multi_head_attention", "default")
    tape, _ = recorded(model, inputs, cotangent)
    assert np.abs(tape.param_grads["key.bias"]).max() < 1e-12
    assert np.abs(tape.param_grads["query.bias"]).max() > 1e-3


# ------------------------------------------------------------------ the tape: off, errors

def test_recording_off_saves_nothing():
    _, model, inputs, _ = setup("encoder_layer", "default")
    assert autograd.entering(model, (), {}) is None
    assert trace.tap_for(model) is trace.untraced  # the forward's taps are the shared no-op


def test_backward_after_a_cached_call_is_an_error():
    _, model, inputs, cotangent = setup("gpt2", "default")
    with autograd.recording(model) as tape:
        model(**inputs, cache=[])
    with pytest.raises(ValueError, match=r"without a key/value cache; received a call with cache="):
        tape.backward(cotangent)


def test_cotangent_errors_name_argument_expected_received():
    _, model, inputs, cotangent = setup("gpt2", "default")
    cases = [({"logits": cotangent["logits"][:, :1]},
              r"cotangent\['logits'\] must have the output's shape \(2, 4, 97\); received shape \(2, 1, 97\)"),
             ({"scores": cotangent["logits"]},
              r"cotangent keys must be output keys \['last_hidden_state', 'logits'\]; received \['scores'\]"),
             (cotangent["logits"], r"cotangent must be a dict over the output keys .*; received ndarray")]
    for bad, message in cases:
        with autograd.recording(model) as tape:
            model(**inputs)
        with pytest.raises(ValueError, match=message):
            tape.backward(bad)


def test_missing_output_keys_count_as_zero():
    _, model, inputs, cotangent = setup("gpt2", "default")
    zero = {"logits": cotangent["logits"], "last_hidden_state": np.zeros_like(cotangent["last_hidden_state"])}
    a, _ = recorded(model, inputs, {"logits": cotangent["logits"]})
    b, _ = recorded(model, inputs, zero)
    for name in a.param_grads:
        np.testing.assert_array_equal(a.param_grads[name], b.param_grads[name])


def test_backward_runs_once_per_recording_and_one_recording_at_a_time():
    _, model, inputs, cotangent = setup("linear", "default")
    with autograd.recording(model) as tape:
        model(**inputs)
        with pytest.raises(RuntimeError, match="a tape is already recording"):
            with autograd.recording(model):
                pass
    tape.backward(cotangent)
    with pytest.raises(ValueError, match="backward must run once per recording; received a second call"):
        tape.backward(cotangent)
    with autograd.recording(model) as tape:
        model(**inputs)
        model(**inputs)
    with pytest.raises(ValueError, match="exactly one call of the model; received 2"):
        tape.backward(cotangent)


# ------------------------------------------------------------------ the check can fail

def layer_norm_backward_without_variance_term(grad, x, gamma, eps):
    mean = x.mean(axis=-1, keepdims=True)
    s = np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    g = grad * gamma
    D = x.shape[-1]
    x_hat = (x - mean) / s
    return ((g - g.mean(axis=-1, keepdims=True)) / s, (grad * x_hat).reshape(-1, D).sum(axis=0),
            grad.reshape(-1, D).sum(axis=0))


def softmax_backward_without_row_sum(grad, probs, mask=None):
    return probs * grad if mask is None else np.where(mask, probs * grad, 0)


def residual_backward_without_skip(grad, sublayer_backward, norm, dropout, norm_first, output_norm=None):
    d_h = dropout.backward(grad)  # pre-norm, skip path dropped
    return norm.backward(sublayer_backward(d_h if output_norm is None else output_norm.backward(d_h)))


@pytest.mark.parametrize("module, name, bug, case, blamed", [
    ("numpy_ref.normalization", "layer_norm_backward", layer_norm_backward_without_variance_term,
     ("layer_norm", "default"), r"input x\["),
    ("numpy_ref.activations", "softmax_backward", softmax_backward_without_row_sum,
     ("softmax", "padding"), r"input scores\["),
    ("numpy_ref.attention", "softmax_backward", softmax_backward_without_row_sum,
     ("scaled_dot_product_attention", "default"), r"input q\["),
    ("numpy_ref.blocks", "residual_backward", residual_backward_without_skip,
     ("encoder_layer", "pre_norm_causal"), r"attention\.query\.kernel\["),
], ids=["layer_norm-variance_term", "softmax-row_sum", "attention-softmax_row_sum", "residual-skip"])
def test_planted_backward_bugs_are_caught(monkeypatch, module, name, bug, case, blamed):
    import importlib
    monkeypatch.setattr(importlib.import_module(module), name, bug)
    with pytest.raises(AssertionError, match=blamed):
        check_against_finite_differences(*case)
