"""LoRA (`conformance.core.lora`, `numpy_ref.lora` and its twins): the same adapters in three
frameworks, peft as the torch side's oracle, and a fine-tuning run against the NumPy reference.

- merged (W + s A B) and unmerged forwards are equal in every framework; with B = 0, peft's start,
  the adapted model is the base model exactly;
- adapter gradients of torch and Keras equal numpy_ref's hand-written backward;
- peft's LoraModel on the `transformers` model of the same weights, with our adapter weights
  copied in, computes the same logits and adapter gradients, and counts the same trainable
  parameters (`get_nb_trainable_parameters`) as `conformance.core.lora.count`;
- N AdamW steps training only the adapters end within the training tolerance row of the float64
  NumPy run, and no base weight moves;
- a target that names no module is one ValueError, the same words in all three frameworks.
"""
from functools import lru_cache

import numpy as np
import pytest

from conformance import build, training, weights
from conformance.compare.tolerance import training_tolerance
from conformance.core import lora
from conformance.oracles import peft as peft_oracle
from conformance.spec import registry

LCFG = lora.LoraConfig(rank=4, alpha=8.0, targets=("query", "value", "inner"))
FRAMEWORKS = ("numpy", "torch", "tf")


@lru_cache(maxsize=None)
def _model(head="mlm", zero_b=False):
    """(cfg, base weights, base + adapter weights, input ids) of BERT-tiny with LCFG's adapters."""
    cfg = registry.get("bert").tiny.replace(head=head)
    base = weights.initialize(cfg, seed=0)
    adapters = lora.initialize(lora.adapters(weights.shapes(cfg, LCFG)), seed=1, zero_b=zero_b)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8))
    return cfg, base, {**base, **adapters}, ids


def test_merged_and_unmerged_forwards_are_equal_and_b_zero_is_the_base_model():
    cfg, base, full, ids = _model()
    _, _, start, _ = _model(zero_b=True)
    merged = lora.merge(full, LCFG)
    assert merged.keys() == base.keys()
    outs = {}
    for framework in FRAMEWORKS:
        unmerged = build(framework, cfg, full, dtype="float64", lora=LCFG)(input_ids=ids)["logits"]
        plain = build(framework, cfg, merged, dtype="float64")(input_ids=ids)["logits"]
        original = build(framework, cfg, base, dtype="float64")(input_ids=ids)["logits"]
        started = build(framework, cfg, start, dtype="float64", lora=LCFG)(input_ids=ids)["logits"]
        assert np.abs(unmerged - plain).max() <= 1e-15 * np.abs(plain).max() * 10, framework
        assert np.abs(unmerged - original).max() > 1e-3, framework  # the adapters do change the output
        assert np.array_equal(started, original), framework         # B = 0: exactly the base model
        outs[framework] = unmerged
    for framework in ("torch", "tf"):
        np.testing.assert_allclose(outs[framework], outs["numpy"], rtol=0, atol=1e-14)


def test_adapter_gradients_equal_the_numpy_backward():
    cfg, _, full, ids = _model()
    grads = {f: build(f, cfg, full, dtype="float64", lora=LCFG).gradients(input_ids=ids).params
             for f in FRAMEWORKS}
    adapters = lora.adapters(grads["numpy"])
    assert len(adapters) == 4 * cfg.num_layers * 3 // 2  # A and B on 3 targets, 2 layers
    scale = max(np.abs(g).max() for g in grads["numpy"].values())
    for framework in ("torch", "tf"):
        assert grads[framework].keys() == grads["numpy"].keys()
        for name, ref in grads["numpy"].items():  # key.bias's is 0 up to rounding: on the global scale
            bound = 1e-12 * (np.abs(ref).max() if name in adapters else scale)
            assert np.abs(grads[framework][name] - ref).max() <= bound, (framework, name)
    assert all(np.abs(g).max() > 0 for g in adapters.values())


@pytest.mark.parametrize("head", ["mlm", "classification"])
def test_peft_computes_the_same_logits_gradients_and_trainable_count(head):
    cfg, base, full, ids = _model(head)
    ours = build("torch", cfg, full, dtype="float64", lora=LCFG)
    c = {"logits": np.random.default_rng(1).standard_normal(ours(input_ids=ids)["logits"].shape)}
    mine = ours.gradients(input_ids=ids, cotangents=c)
    outs, grads = peft_oracle.outputs_and_gradients(cfg, full, LCFG, {"input_ids": ids}, c)
    np.testing.assert_allclose(mine.outputs["logits"], outs["logits"], rtol=0, atol=1e-14)
    assert grads.keys() == lora.adapters(mine.params).keys()
    for name, g in grads.items():
        np.testing.assert_allclose(mine.params[name], g, rtol=0, atol=1e-14 * np.abs(g).max(), err_msg=name)
    trainable, total = peft_oracle.peft_model(cfg, full, LCFG).get_nb_trainable_parameters()
    counted = lora.count(lora.linear_shapes(weights.shapes(cfg), LCFG), LCFG)
    assert trainable == counted["lora"] == sum(a.size for a in lora.adapters(full).values())
    tcfg = training.for_framework(training.TrainConfig(task=head, lora=LCFG), "torch")
    step, built = training.trainer("torch", cfg, full, tcfg)  # what our torch trainer really optimizes
    assert sum(p.numel() for p in step.trainable.values()) == trainable
    assert sum(p.numel() for p in built.module.parameters() if p.requires_grad) == trainable
    assert total == sum(a.size for a in full.values())
    assert counted["lora"] == 3 * cfg.num_layers * LCFG.rank * (cfg.d_model + cfg.d_model) \
        - cfg.num_layers * LCFG.rank * (cfg.d_model - cfg.d_ff)  # query, value: D -> D; inner: D -> F


def test_a_target_that_names_no_module_is_one_error_in_every_framework():
    cfg, base, _, _ = _model()
    wrong = LCFG.replace(targets=("query", "qkv"))
    messages = set()
    for framework in FRAMEWORKS:
        module = build(framework, cfg, base, dtype="float64").module
        with pytest.raises(ValueError) as e:
            build(framework, cfg, base, dtype="float64").backend.apply_lora(module, wrong)
        messages.add(str(e.value))
    assert messages == {"LoraConfig.targets must name Linear modules of the model, one of ['inner', 'key', "
                        "'outer', 'output', 'query', 'transform', 'value'] (or a dotted path ending in one); "
                        "received ['qkv'], which match no module"}
    with pytest.raises(ValueError, match=r"received \['qkv'\]"):
        weights.shapes(cfg, wrong)


@pytest.mark.parametrize("changes, message", [
    ({"rank": 0}, "rank must be a positive int; received rank=0"),
    ({"alpha": -1.0}, "alpha must be a number > 0; received alpha=-1.0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\); received dropout=1.0"),
    ({"targets": "query"}, "targets must be a non-empty tuple of module names"),
])
def test_lora_config_refuses_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        lora.LoraConfig(**changes)


def test_train_config_and_build_refuse_a_lora_that_is_not_a_lora_config():
    with pytest.raises(ValueError, match="TrainConfig.lora must be None or a conformance.core.lora.LoraConfig; "
                                         "received lora='query'"):
        training.TrainConfig(lora="query")
    with pytest.raises(ValueError, match="TrainConfig.checkpointing must be True or False; received checkpointing=1"):
        training.TrainConfig(checkpointing=1)
    cfg, base, full, _ = _model()
    with pytest.raises(weights.WeightsError, match="missing encoder.0.attention.query.lora_a.kernel"):
        build("numpy", cfg, base, lora=LCFG)  # adapters expected
    with pytest.raises(ValueError, match="lora must be None or a conformance.core.lora.LoraConfig; received str"):
        build("torch", cfg, full, lora="query")
    with pytest.raises(ValueError, match="lora= builds a mirror"):
        build("onnx", cfg, full, lora=LCFG)


STEPS = 3


@lru_cache(maxsize=None)
def _run_setup():
    tcfg = training.TrainConfig(task="mlm", steps=STEPS, seq_len=8, learning_rate=1e-2,
                                lora=LCFG.replace(dropout=0.1))
    return (*training.setup(registry.get("bert").tiny, "mlm", tcfg), tcfg)


@lru_cache(maxsize=None)
def _reference(framework):
    cfg, w, batches, tcfg = _run_setup()
    return training.train("numpy", cfg, w, batches, training.for_framework(tcfg, framework))


def test_lora_fine_tuning_after_n_steps_matches_the_reference(framework, dtype):
    """Adapters only, dropout on the adapter inputs (the same supplied masks everywhere): after N
    AdamW steps every adapter is within the training row of its dtype and no base weight moved."""
    cfg, w, batches, tcfg = _run_setup()
    run = training.train(framework, cfg, w, batches, training.for_framework(tcfg, framework), dtype=dtype)
    ref = _reference(framework)
    tol = training_tolerance(dtype)
    param, error = training.worst(training.weight_errors(run.weights, ref.weights))
    assert error <= tol.atol, f"{framework} {dtype}: {param} off by {error:.3g} after {STEPS} steps (> {tol.atol:g})"
    moved = training.moved(w, run.weights)
    assert all(moved[n] == 0.0 for n in moved if not lora.is_adapter(n)), "a frozen base weight moved"
    assert min(moved[n] for n in lora.adapters(moved) if ".lora_b." in n) > 100 * tol.atol  # B left zero
    groups = training.groups(cfg, tcfg)
    assert {n for n, g in groups.items() if g.trainable} == set(lora.adapters(w))


def test_declared_flops_of_an_adapted_model_are_what_torch_counts():
    """numpy_ref's LoraLinear.flops (the base projection + 2 N r (in + out)) summed over the tree
    equals FlopCounterMode on the torch model with the same adapters."""
    import torch
    from conformance.backends.torch_backend import flop_count
    from conformance.core.costs import MATMUL
    from conformance.costs.flops import input_shapes
    from numpy_ref import lora as np_lora
    cfg, _, full, ids = _model()
    reference = registry.get(cfg.kind).reference(cfg)
    np_lora.apply(reference, LCFG)
    declared = sum(o.total for o in reference.flops(**input_shapes(cfg, *ids.shape)) if o.category in MATMUL)
    plain = sum(o.total for o in registry.get(cfg.kind).reference(cfg).flops(**input_shapes(cfg, *ids.shape))
                if o.category in MATMUL)
    m = build("torch", cfg, full, dtype="float32", lora=LCFG)
    counted = flop_count(m.module, {"input_ids": torch.from_numpy(ids)})["matmul"]
    assert declared == counted
    N = ids.size
    assert declared - plain == sum(2 * N * LCFG.rank * (i + o) for i, o in
                                   lora.linear_shapes(weights.shapes(cfg), LCFG).values())


def test_declared_saved_bytes_of_an_adapted_layer_are_what_autograd_keeps():
    """numpy_ref's LoraLinear.saved: x for the frozen kernel's gradient, the adapter's dropped input
    and its keep mask, and x A, as torch's saved_tensors_hooks see them (one count per storage)."""
    import torch
    from conformance.core.costs import rows
    from numpy_ref import lora as np_lora
    from torch_impl import lora as torch_lora
    lcfg = LCFG.replace(dropout=0.5)
    x = torch.randn(2, 5, 8, requires_grad=True)  # as inside a model: dropout then keeps its mask
    declared = sum(r.bytes for r in np_lora.LoraLinear(8, 6, True, lcfg).saved(4, tuple(x.shape)))
    layer = torch_lora.LoraLinear(8, 6, True, lcfg).train()
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    assert declared == sum(seen.values()) == rows(x.shape) * (8 * 4 + 8 + 8 * 4 + lcfg.rank * 4)


def test_a_planted_missing_scale_is_caught_and_pinned_to_the_adapted_projection(monkeypatch):
    """torch's LoraLinear adding the update without s = alpha / r: the trace comparison against the
    reference names the first adapted projection's output, not the adapter's own ops before it."""
    from conformance.compare.divergence import first_divergence
    from torch_impl import lora as torch_lora
    cfg, _, full, ids = _model()
    reference = build("numpy", cfg, full, dtype="float64", lora=LCFG).trace(input_ids=ids)[1]
    monkeypatch.setattr(torch_lora.LoraLinear, "scaling", property(lambda self: 1.0, lambda self, v: None),
                        raising=False)
    planted = build("torch", cfg, full, dtype="float64", lora=LCFG).trace(input_ids=ids)[1]
    first = first_divergence(reference, planted, "float64")
    assert first is not None and first.name == "encoder.0.attention.query.output", first
