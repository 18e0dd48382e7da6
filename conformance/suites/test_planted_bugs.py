"""The harness proves it can fail: each planted bug is caught, and pinned to its op.

Every bug is planted in the PyTorch twin only, the way such bugs happen: a missing
1/sqrt(Dh), a padding mask shifted by one position, a square kernel loaded without its
transpose (it still fits, so no shape check can catch it), a layer-norm epsilon from
the wrong framework's default, erf GELU where the config says tanh, causal linear attention's prefix
sums one position late, and FAVOR+'s features without their - |x|^2 / 2. For each, the
generated check fails naming the component and the output tensor, and the trace
comparison names the first op that diverges.
"""
import inspect
import textwrap

import pytest
import torch

import torch_impl.attention
import torch_impl.linear_attention
import torch_impl.tiled_attention
from conformance.backends import torch_backend
from conformance.spec.leaves import Leaf
from conformance.backends.build import build
from conformance.compare.divergence import first_divergence
from conformance.suites.cases import case_data, check_case, failure_message


def missing_scale(monkeypatch, cfg, w, dtype):
    return build("torch", cfg.replace(attention_scale=1.0), w, dtype=dtype)


def shifted_mask(monkeypatch, cfg, w, dtype):
    correct = torch_impl.attention.attention_mask
    monkeypatch.setattr(torch_impl.attention, "attention_mask",
                        lambda *a, **k: torch.roll(correct(*a, **k), 1, dims=-1))
    return build("torch", cfg, w, dtype=dtype)


def untransposed_query(monkeypatch, cfg, w, dtype):
    correct = torch_backend.canonical_names

    def buggy(module):  # the torch mapping forgets to transpose the query kernel
        return {c: (key, Leaf(leaf.canonical, leaf.external) if c.endswith("attention.query.kernel") else leaf)
                for c, (key, leaf) in correct(module).items()}

    monkeypatch.setattr(torch_backend, "canonical_names", buggy)
    return build("torch", cfg, w, dtype=dtype)


def keras_epsilon(monkeypatch, cfg, w, dtype):
    return build("torch", cfg.replace(layer_norm_eps=1e-3), w, dtype=dtype)


def erf_gelu(monkeypatch, cfg, w, dtype):
    return build("torch", cfg.replace(activation="gelu"), w, dtype=dtype)


def prefix_one_late(monkeypatch, cfg, w, dtype):
    """Causal linear attention's prefix sums one position late: each query also reads the next key."""
    monkeypatch.setattr(torch_impl.linear_attention, "prefix_sums",
                        lambda x, T, offset: torch.cumsum(x, dim=2)[:, :, offset + 1:offset + 1 + T])
    return build("torch", cfg, w, dtype=dtype)


def random_features_without_norm(monkeypatch, cfg, w, dtype):
    """FAVOR+ without the - |x|^2 / 2 term: positive features of another kernel (a query's own cancels in its
    row-wise max; the keys' do not)."""
    def buggy(x, features, scale, axes):
        x = x * scale ** 0.5
        exponent = x @ features
        return torch.exp(exponent - torch.amax(exponent.detach(), dim=axes, keepdim=True)) / features.shape[-1] ** 0.5

    monkeypatch.setattr(torch_impl.linear_attention, "random_feature_map", buggy)
    return build("torch", cfg, w, dtype=dtype)


def missing_rescale(monkeypatch, cfg, w, dtype):
    """The online softmax's one subtle line lost: the partial sums are not rescaled by exp(m - m') when
    a later block of keys raises the running max (the source line is replaced, as an edit would)."""
    source = textwrap.dedent(inspect.getsource(torch_impl.tiled_attention.tiled_attention))
    line = "rescale = torch.exp(m - finite_or_zero(m_new))"
    assert line in source
    namespace = dict(vars(torch_impl.tiled_attention))
    exec(source.replace(line, "rescale = torch.ones_like(m)"), namespace)  # noqa: S102
    monkeypatch.setattr(torch_impl.tiled_attention, "tiled_attention", namespace["tiled_attention"])
    return build("torch", cfg, w, dtype=dtype)


PLANTED = [
    # (bug, registry case, output it corrupts, first op the trace comparison must name)
    (missing_scale, ("encoder_layer", "default"), "output", "attention.scores"),
    (shifted_mask, ("multi_head_attention", "default"), "output", "probs"),
    (untransposed_query, ("encoder_layer", "default"), "output", "attention.query.output"),
    # eps only matters against the variance it is added to: BERT's embedding sum has variance
    # ~1e-3, where Keras's 1e-3 default halves it; after a layer of unit-scale activations
    # the same bug moves outputs by ~1e-5 relative, below float32 resolution of the check.
    (keras_epsilon, ("bert", "default"), "last_hidden_state", "embeddings.norm.output"),
    (keras_epsilon, ("layer_norm", "default"), "output", "output"),
    (erf_gelu, ("encoder_layer", "pre_norm_causal"), "output", "feed_forward.activation.output"),
    (missing_scale, ("bert", "default"), "last_hidden_state", "encoder.0.attention.scores"),
    (untransposed_query, ("gpt2", "default"), "logits", "layers.0.attention.query.output"),
    (prefix_one_late, ("linear_attention", "causal_top_left"), "output", "kv"),
    (random_features_without_norm, ("performer_attention", "default"), "output", "key_features"),
    (missing_rescale, ("multi_head_attention", "tiled"), "output", "context"),  # no scores or probs to tap
    (missing_rescale, ("llama", "tiled"), "logits", "layers.0.attention.context"),
]
IDS = [f"{bug.__name__}-{case[0]}[{case[1]}]" for bug, case, _, _ in PLANTED]


@pytest.mark.parametrize("bug,case,tensor,first_op", PLANTED, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_planted_bug_is_caught_and_pinned(monkeypatch, bug, case, tensor, first_op, dtype):
    _, cfg, w, inputs, _ = case_data(*case)
    buggy = bug(monkeypatch, cfg, w, dtype)

    results = check_case(*case, "torch", dtype, built=buggy)
    assert not all(r.passed for r in results), f"{bug.__name__} went unnoticed"
    message = failure_message(results)
    assert case[0] in message and f".{tensor}:" in message, message

    _, reference_trace = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    _, buggy_trace = buggy.trace(**inputs)
    first = first_divergence(reference_trace, buggy_trace, dtype)
    assert first is not None and first.name == first_op, f"pinned to {first}, expected {first_op}"


@pytest.mark.parametrize("case", [("encoder_layer", "default"), ("bert", "default")])
def test_correct_twin_has_no_divergence(case):
    """The control: the unmodified twin's trace agrees op by op."""
    _, cfg, w, inputs, _ = case_data(*case)
    _, reference_trace = build("numpy", cfg, w, dtype="float64").trace(**inputs)
    _, trace = build("torch", cfg, w, dtype="float64").trace(**inputs)
    assert first_divergence(reference_trace, trace, "float64") is None
