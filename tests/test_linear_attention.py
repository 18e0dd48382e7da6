"""Linear attention and Performer (issue 19): what the generated suites do not say.

The generated suites hold the three mirrors equal to the float64 reference and its backward to finite
differences; these tests check the reference itself against the O(T^2) formula it replaces, the claims
the docs make about its distance from softmax attention (`study.efficiency`), its costs, its ONNX export
(a CumSum in the graph) and its bad input.
"""
import io

import numpy as np
import pytest

from conformance import weights
from conformance.backends import build
from conformance.core.config import Config
from conformance.spec import registry
from numpy_ref.attention import causal_mask
from numpy_ref.linear_attention import LinearAttention, PerformerAttention, elu_feature_map, random_feature_map
from study import efficiency


def case(name, variant):
    entry = registry.get(name)
    cfg = entry.config(variant)
    return cfg, weights.initialize(cfg), entry.inputs(cfg, variant)


def run(framework, cfg, w, x, dtype="float64"):
    return build(framework, cfg, w, dtype=dtype)(**x)["output"]


def quadratic(qf, kf, v, mask):
    """The same attention the long way: the (T, S) similarities phi(q) . phi(k), masked, normalized."""
    sim = qf @ kf.swapaxes(-1, -2) * mask                                       # (B, H, T, S)
    return sim @ v / sim.sum(-1, keepdims=True)                                 # (B, H, T, Dh)


@pytest.mark.parametrize("name", ["linear_attention", "performer_attention"])
@pytest.mark.parametrize("variant", ["default", "padding_causal", "causal_top_left"])
def test_prefix_sums_equal_the_quadratic_form(name, variant):
    """kv and z taken once (or as prefix sums) give what the explicit (T, S) weights give, masks included."""
    if variant not in registry.get(name).variants:
        variant = "padding_causal" if variant == "causal_top_left" else variant
    cfg, w, x = case(name, variant)
    out = run("numpy", cfg, w, x)
    q, k, v = x["q"], x["k"], x["v"]
    if name == "linear_attention":
        qf, kf = elu_feature_map(q), elu_feature_map(k)
    else:
        qf = random_feature_map(q, w["random_features"].astype(np.float64), cfg.scale, -1)
        kf = random_feature_map(k, w["random_features"].astype(np.float64), cfg.scale, (2, 3))
    T, S = q.shape[2], k.shape[2]
    mask = np.ones((1, 1, T, S), bool) if "mask" not in x else x["mask"][:, None, None, :]
    if cfg.causal:
        mask = mask & causal_mask(T, S, cfg.causal_alignment)[None, None]
    np.testing.assert_allclose(out, quadratic(qf, kf, v, mask), rtol=1e-12, atol=1e-14)


def test_performer_with_many_features_approaches_softmax_and_its_weights_are_unbiased():
    """E[phi(q) . phi(k)] = exp(q . k / sqrt(Dh)): with 200,000 features the estimate is within 1%. One
    shift for all of a head's rows (the keys' stabiliser) keeps each row's |x|^2 / 2 term, which matters."""
    rng = np.random.default_rng(0)
    q, k = (0.5 * rng.standard_normal((1, 1, 3, 8)) for _ in range(2))
    w = rng.standard_normal((8, 200_000))
    scale = 8 ** -0.5
    qf, kf = (random_feature_map(x, w, scale, (2, 3)) for x in (q, k))  # divided by exp(max exponent) ...
    shift = [np.exp(((x * scale ** 0.5) @ w - (x * x).sum(-1, keepdims=True) * scale / 2).max()) for x in (q, k)]
    estimate = (qf * shift[0]) @ (kf * shift[1]).swapaxes(-1, -2)  # ... put back: the raw estimate (1, 1, 3, 3)
    np.testing.assert_allclose(estimate, np.exp(q @ k.swapaxes(-1, -2) * scale), rtol=0.01)


@pytest.fixture(scope="module")
def errors():
    return efficiency.linear_attention_error(lengths=(64, 256), features=(8, 32, 128), draws=3)


def test_performer_error_falls_like_one_over_sqrt_m(errors):
    for T in (64, 256):
        assert -0.75 < efficiency.slope(errors, T) < -0.3, T
    at = {(p.length, p.features): p.error for p in errors if p.method == "performer"}
    assert all(at[T, 128] < at[T, 8] / 2.5 for T in (64, 256))  # sqrt(16) = 4 in expectation


def test_linear_attention_does_not_converge_to_softmax(errors):
    """elu + 1 is another similarity: its distance from softmax neither shrinks with T nor has an M to grow,
    and Performer at M = 128 is closer."""
    linear = {p.length: p.error for p in errors if p.method == "linear"}
    performer = {p.length: p.error for p in errors if p.method == "performer" and p.features == 128}
    assert all(e > 0.05 for e in linear.values())
    assert linear[256] > linear[64] / 2
    assert all(performer[T] < linear[T] for T in linear)


def test_performer_needs_small_queries_and_keys():
    """The spread of a term is exp(|x + y|^2) - 1: at q, k entries of std 0.7 (Dh = 32) 256 features barely help."""
    rows = efficiency.by_std(stds=(0.7,), length=64, features=(8, 64, 256), draws=3)[0.7]
    assert efficiency.slope(rows, 64) > -0.2


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cls,kind", [(LinearAttention, "linear_attention"),
                                      (PerformerAttention, "performer_attention")])
def test_flops_are_linear_in_the_sequence(cls, kind, causal):
    module = cls(Config(kind=kind, causal=causal, performer_features=16))
    total = {T: sum(o.total for o in module.flops(q=(1, 4, T, 8), k=(1, 4, T, 8))) for T in (64, 128)}
    assert total[128] == 2 * total[64]
    assert not any(o.pairs for o in module.flops(q=(1, 4, 64, 8), k=(1, 4, 64, 8)))


@pytest.mark.parametrize("value", [0, -4, True, 2.5])
def test_a_feature_count_that_is_not_a_positive_int_is_refused(value):
    with pytest.raises(ValueError, match=rf"Config.performer_features must be a positive int; "
                                         rf"received performer_features={value!r}"):
        Config(kind="performer_attention", performer_features=value)


@pytest.mark.parametrize("name", ["linear_attention", "performer_attention"])
def test_bad_masks_and_causal_shapes_get_one_message_in_every_framework(name):
    """A (B, 1, T, S) score mask cannot apply (the keys are summed before any query): refused, as are
    more queries than keys in causal attention, with the same message in all three."""
    cfg, w, x = case(name, "default")
    bad = {"score-shaped mask": (cfg, dict(x, mask=np.ones((2, 1, 7, 9), bool)), r"mask must have shape \(B, S\)"),
           "T > S causal": (cfg.replace(causal=True), dict(x, q=np.ones((2, 4, 10, 8)), mask=None),
                            "q must have at most as many positions as k in causal linear attention")}
    for what, (c, inputs, message) in bad.items():
        seen = set()
        for framework in ("numpy", "torch", "tf"):
            with pytest.raises(ValueError, match=message) as e:
                build(framework, c, w)(**{k: v for k, v in inputs.items() if v is not None})
            seen.add(str(e.value))
        assert len(seen) == 1, (what, seen)


def test_causal_performer_exports_to_onnx_with_a_cumsum_and_dynamic_lengths():
    import onnx
    import onnxruntime as ort
    import torch

    cfg, w, x = case("performer_attention", "padding_causal")
    module = build("torch", cfg, w, dtype="float32").module
    args = tuple(torch.from_numpy(x[n].astype(np.float32)) for n in ("q", "k", "v")) + (torch.from_numpy(x["mask"]),)
    f = io.BytesIO()
    axes = {"q": {2: "T"}, "k": {2: "S"}, "v": {2: "S"}, "mask": {1: "S"}, "context": {2: "T"}}
    torch.onnx.export(module, args, f, dynamo=False, opset_version=18, input_names=["q", "k", "v", "mask"],
                      output_names=["context"], dynamic_axes=axes)
    proto = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    assert "CumSum" in {n.op_type for n in proto.graph.node}
    longer = registry.get("performer_attention").inputs(cfg, "padding_causal", seed=1, length=12)
    session = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {n: (longer[n] if n == "mask" else longer[n].astype(np.float32)) for n in ("q", "k", "v", "mask")}
    out = session.run(None, feeds)[0]
    ref = run("numpy", cfg, w, longer)
    assert out.shape == ref.shape == (2, 4, 12, 8)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def autograd_saved_bytes(cfg, w, x):
    """Bytes torch's autograd keeps for backward (one count per storage, parameters excluded)."""
    import torch

    built = build("torch", cfg, w, dtype="float32")
    inputs = built.backend.inputs(x, "float32", "cpu")
    for name in ("q", "k", "v"):
        inputs[name].requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in built.module.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        built.module(**inputs)
    return sum(saved.values())


@pytest.mark.parametrize("name", ["linear_attention", "performer_attention"])
@pytest.mark.parametrize("variant", ["default", "no_mask", "padding_causal"])
def test_declared_saved_tensors_are_what_autograd_keeps(name, variant):
    cfg, w, x = case(name, variant)
    declared = registry.get(name).reference(cfg).saved(4, **{k: v.shape for k, v in x.items()})
    assert sum(s.bytes for s in declared) == autograd_saved_bytes(cfg, w, x)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["linear_attention", "performer_attention"])
def test_declared_inference_peak_is_the_torch_allocator_peak(kind, causal):
    """q, k, v (allocated before the profiled call) plus what torch's allocator peaks at, within 1%; causal,
    the (B, H, S, M, Dh) outer products and their prefix sums dominate."""
    cfg = Config(kind=kind, d_model=128, num_heads=4, causal=causal, performer_features=64)
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal((1, 4, 128, 32)).astype(np.float32) for n in "qkv"}
    built = build("torch", cfg, weights.initialize(cfg), dtype="float32")
    measured = built.backend.allocator_peaks(built, x)["allocator_peak"] + sum(a.nbytes for a in x.values())
    declared = registry.get(kind).reference(cfg).peak(4, None, **{k: v.shape for k, v in x.items()})
    assert declared == pytest.approx(measured, rel=0.01)


def test_the_random_projection_is_one_standard_normal_weight_shared_by_the_frameworks():
    """`random_features` is drawn once, N(0, 1) (not the kernels' N(0, 0.02)), and every framework holds that array."""
    cfg, w, _ = case("performer_attention", "features_64")
    assert w["random_features"].shape == (cfg.head_dim, 64) and 0.85 < w["random_features"].std() < 1.15
    for framework in ("torch", "tf"):
        np.testing.assert_array_equal(build(framework, cfg, w, dtype="float32").weights()["random_features"],
                                      w["random_features"])
