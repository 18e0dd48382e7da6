"""Tiled (flash) attention's claims (`Config.attention_impl="tiled"`, `numpy_ref.tiled_attention`): exact
against the reference attention to float64 rounding, forward and backward, whatever the block sizes;
fully masked rows exactly zero; torch's training memory linear in the sequence (its blockwise backward);
the costs it declares; its block sizes validated; its ONNX export refused by name. The registry's
tiled variants run through every generated suite as well (conformance, gradients, tracing, planted
bugs: `missing_rescale`)."""
import numpy as np
import pytest
import torch

from conformance import weights as weights_lib
from conformance.backends import build, onnx_export
from conformance.compare.tolerance import TOLERANCES, compare
from conformance.core.config import ATTENTION_IMPLS, Config
from conformance.costs import flops
from conformance.spec import registry
from conformance.suites.cases import case_data
from numpy_ref.activations import softmax
from numpy_ref.attention import attention_mask, scaled_dot_product_attention, scaled_dot_product_attention_backward
from numpy_ref.tiled_attention import tiled_attention, tiled_attention_backward, tiled_flops

EPS = np.finfo(np.float64).eps
BOUND = 32 * EPS  # measured worst: 2.0e-15 forward, 2.6e-15 backward (~9 and ~12 eps), relative to the largest entry
BLOCKS = [(1, 1), (3, 5), (16, 16), (64, 128), (1000, 1000)]  # single rows, ragged, even, wider than T or S


def _sdpa(T, S, bq, bk, **fields):
    return Config(kind="scaled_dot_product_attention", d_model=64, num_heads=4, attention_impl="tiled",
                  attention_block_q=bq, attention_block_k=bk, **fields)


@pytest.mark.parametrize("bq,bk", BLOCKS)
@pytest.mark.parametrize("causal,softcap", [(False, None), (True, None), (True, 3.0)])
def test_float64_forward_and_backward_equal_the_reference_to_rounding(bq, bk, causal, softcap):
    """T = 37, S = 53 (no block size divides both): output, dq, dk, dv within 32 eps of the reference's
    largest entry, where the reference's float64 tolerance row allows far more."""
    rng = np.random.default_rng(bq * 1000 + bk)
    T, S, cfg = 37, 53, _sdpa(37, 53, bq, bk, attn_logit_softcap=softcap)
    q, k = rng.standard_normal((2, 4, T, 16)) * 2, rng.standard_normal((2, 4, S, 16)) * 2
    v, grad = rng.standard_normal((2, 4, S, 16)), rng.standard_normal((2, 4, T, 16))
    mask = attention_mask(rng.random((2, S)) > 0.2, T, S, causal)
    reference = scaled_dot_product_attention(q, k, v, mask, cfg, lambda n, x: x)
    out, lse = tiled_attention(q, k, v, mask, cfg)
    assert np.abs(out - reference).max() <= BOUND * np.abs(reference).max()
    assert compare("context", out, reference, TOLERANCES["float64"]).passed
    scores = q @ k.swapaxes(-1, -2) * cfg.scale
    capped = None if softcap is None else softcap * np.tanh(scores / softcap)
    probs = softmax(scores if capped is None else capped, mask, cfg.mask_fill)
    expected = scaled_dot_product_attention_backward(grad, q, k, v, probs, mask, cfg, lambda n, x: x, capped)[:3]
    for name, want, got in zip(("dq", "dk", "dv"), expected, tiled_attention_backward(grad, q, k, v, out, lse,
                                                                                     mask, cfg)[:3]):
        assert np.abs(got - want).max() <= BOUND * np.abs(want).max(), name


@pytest.mark.parametrize("framework", ["numpy", "torch", "tf"])
@pytest.mark.parametrize("fill", [-1e9, float("-inf")])
def test_a_fully_masked_row_is_exactly_zero(framework, fill):
    """As `softmax` defines it: every key of the row masked, in every block (fill -inf too: no NaN)."""
    _, cfg, w, inputs, _ = case_data("scaled_dot_product_attention", "tiled")
    out = build(framework, cfg.replace(mask_fill=fill), w, dtype="float64")(**inputs)["output"]
    assert not inputs["mask"][0, 0, 0].any() and np.all(out[0, :, 0] == 0) and np.isfinite(out).all()
    assert np.abs(out[0, :, 1:]).max() > 0.1


def test_torch_and_tf_float64_equal_their_reference_attention():
    """The mirrors' own loops in float64, against the same framework's reference lines, gradients included."""
    for case in (("multi_head_attention", "tiled_gqa_rotary"), ("multi_head_attention", "tiled_position_bias")):
        _, cfg, w, inputs, _ = case_data(*case)
        for framework in ("torch", "tf"):
            ref = build(framework, cfg.replace(attention_impl="reference"), w, dtype="float64")
            tiled = build(framework, cfg, w, dtype="float64")
            g_ref = ref.gradients(seed=0, **inputs)
            g = tiled.gradients(cotangents=g_ref.cotangents, **inputs)
            for name, want in {**g_ref.inputs, **g_ref.params}.items():
                got = {**g.inputs, **g.params}[name]
                if want is not None:
                    assert np.abs(got - want).max() <= BOUND * max(np.abs(want).max(), 1), (framework, name)


def _torch_saved_bytes(cfg, T):
    """Bytes autograd keeps for the backward of one torch multi-head attention at B = 1, T = S."""
    cfg = cfg.replace(max_positions=max(cfg.max_positions, T))
    model = build("torch", cfg, weights_lib.initialize(cfg))
    x = {"x": np.random.default_rng(0).standard_normal((1, T, cfg.d_model)), "mask": np.ones((1, T), bool)}
    return model.backend.training_memory(model, x)["saved_for_backward"]


def test_torch_training_memory_is_linear_in_the_sequence(monkeypatch):
    """Twice the sequence, exactly twice the saved bytes for tiled (q, k, v, output, logsumexp); the
    reference keeps (T, S) scores and more than doubles. Planted: differentiating the plain loop with
    autograd instead of `TiledAttention` keeps every tile, and the test sees it."""
    cfg = registry.get("multi_head_attention").config("tiled").replace(attention_block_q=8, attention_block_k=8)
    assert _torch_saved_bytes(cfg, 32) == 2 * _torch_saved_bytes(cfg, 16)
    reference = cfg.replace(attention_impl="reference")
    assert _torch_saved_bytes(reference, 32) > 2.5 * _torch_saved_bytes(reference, 16)
    import torch_impl.attention
    import torch_impl.tiled_attention as tiled
    monkeypatch.setattr(torch_impl.attention, "tiled_context", lambda *a: tiled.tiled_attention(*a)[0])
    assert _torch_saved_bytes(cfg, 32) > 2.5 * _torch_saved_bytes(cfg, 16)


def test_t5_declares_what_tiled_attention_keeps():
    """A model with a position bias: every layer's `TiledAttention` keeps the one shared bias tensor,
    declared once by `RelativePositionBias.saved`; the whole model's declaration equals autograd's."""
    from conformance.costs import memory
    from conformance.report import runner
    cfg = registry.get("t5").config("default").replace(attention_impl="tiled", attention_block_q=4,
                                                       attention_block_k=8, num_layers=1, num_decoder_layers=1)
    w = weights_lib.initialize(cfg)
    model = build("torch", cfg, w)
    measured = model.backend.training_memory(model, runner.model_inputs(cfg, 2, 12))
    assert measured["saved_for_backward"] == memory.activations(cfg, 2, 12)["training"]["none"]
    inputs = runner.model_inputs(cfg, 2, 12)  # and the model's output is the reference attention's
    tiled = build("numpy", cfg, w, dtype="float64")(**inputs)["logits"]
    reference = build("numpy", cfg.replace(attention_impl="reference"), w, dtype="float64")(**inputs)["logits"]
    assert np.abs(tiled - reference).max() <= BOUND * np.abs(reference).max()


def test_declared_saved_bytes_are_linear_and_match_autograd():
    """`MultiHeadAttention.saved` for tiled (a whole model: the T5 test above) doubles
    with the sequence and equals what torch's autograd keeps for the component."""
    cfg = registry.get("multi_head_attention").config("tiled")
    declared = [sum(r.bytes for r in registry.get(cfg.kind).reference(cfg).saved(4, x=(1, T, cfg.d_model)))
                for T in (64, 128)]
    assert declared[1] == 2 * declared[0]
    assert declared[0] == _torch_saved_bytes(cfg.replace(max_positions=64), 64)


def test_flops_are_the_reference_attentions_plus_the_rescales():
    """The same matmuls (FlopCounterMode counts the torch loop's: tests/test_costs.py), plus `tiled_flops`."""
    _, cfg, w, inputs, _ = case_data("multi_head_attention", "tiled")
    shapes = {k: v.shape for k, v in inputs.items()}
    ref = flops.collapse(registry.get(cfg.kind).reference(cfg.replace(attention_impl="reference")).flops(**shapes))
    tiled = flops.collapse(registry.get(cfg.kind).reference(cfg).flops(**shapes))
    (B, T, _), H, Dh = shapes["x"], cfg.num_heads, cfg.head_dim
    assert flops.totals(tiled)["matmul"] == flops.totals(ref)["matmul"]
    assert flops.totals(tiled)["all"] - flops.totals(ref)["all"] == tiled_flops(B, H, T, T, Dh, 4) > 0
    assert tiled_flops(1, 1, 10, 100, 8, 100) == 10 * (8 + 4 + 8)  # one block of keys: (Dh + 4) + Dh a row


@pytest.mark.parametrize("field", ["attention_block_q", "attention_block_k"])
@pytest.mark.parametrize("value", [0, -4, 2.0, True])
def test_a_block_size_must_be_a_positive_int(field, value):
    """One Config for all three frameworks: the same message wherever it is built."""
    with pytest.raises(ValueError, match=rf"^Config\.{field} must be a positive int; received {field}={value!r}$"):
        Config(kind="multi_head_attention", attention_impl="tiled", **{field: value})


def test_onnx_export_of_a_tiled_model_is_refused_by_name():
    _, cfg, w, _, _ = case_data("llama", "tiled")
    for source in ("torch", "tf"):
        with pytest.raises(ValueError, match=r"attention_impl='tiled' unrolls its loop over blocks at one traced "
                                             r"length; export with attention_impl='reference' or 'fused'"):
            onnx_export.export(cfg, w, source)


def test_inference_keeps_no_autograd_function():
    """With no gradient recorded the loop runs bare (what export and inference see); recording, the
    output comes from `TiledAttention`, whose backward is the blockwise one."""
    from torch_impl.tiled_attention import tiled_context
    cfg = _sdpa(8, 8, 3, 3)
    q, k, v = (torch.randn(1, 4, 8, 16, dtype=torch.float64) for _ in range(3))
    assert tiled_context(q, k, v, None, cfg).grad_fn is None
    assert type(tiled_context(q.requires_grad_(), k, v, None, cfg).grad_fn).__name__ == "TiledAttentionBackward"


def test_declared_inference_peak_is_linear_and_near_the_torch_allocator_peak():
    """`MultiHeadAttention.peak` for tiled: equal increments as T doubles (linear), where the reference's
    grow (quadratic); and within 25% of what torch's allocator peaks at in one tiled forward."""
    from conformance.costs import memory
    cfg = registry.get("multi_head_attention").config("tiled").replace(attention_block_q=32, attention_block_k=32,
                                                                       max_positions=512)
    declared = lambda c, T: memory.inference_peak(c, 1, T, 4, memory.LIVE["torch"])  # noqa: E731
    tiled = [declared(cfg, T) for T in (128, 256, 512)]
    reference = [declared(cfg.replace(attention_impl="reference"), T) for T in (128, 256, 512)]
    assert tiled[2] - tiled[1] == 2 * (tiled[1] - tiled[0])
    assert reference[2] - reference[1] > 3 * (reference[1] - reference[0])
    model = build("torch", cfg, weights_lib.initialize(cfg))
    x = {"x": np.random.default_rng(0).standard_normal((1, 512, cfg.d_model)), "mask": np.ones((1, 512), bool)}
    measured = model.backend.allocator_peaks(model, x)["allocator_peak"]
    assert 0.8 < measured / tiled[2] < 1.25, (measured, tiled[2])


@pytest.mark.parametrize("framework", ["numpy", "torch", "tf"])
def test_tiled_traces_context_but_none_of_the_tiles(framework):
    """Exactly the taps ATTENTION_IMPLS declares are missing (soft-capped scores included), in every
    framework; the generated gradient suite compares everything else."""
    _, cfg, w, inputs, _ = case_data("scaled_dot_product_attention", "tiled_causal_softcap")
    _, records = build(framework, cfg, w, dtype="float64").trace(**inputs)
    _, unfused = build(framework, cfg.replace(attention_impl="reference"), w, dtype="float64").trace(**inputs)
    missing = set(unfused) - set(records)
    assert "context" in records and {n.rpartition(".")[2] for n in missing} == {"scores", "capped", "probs"}
    assert all(n.rpartition(".")[2] in ATTENTION_IMPLS["tiled"] for n in missing)
