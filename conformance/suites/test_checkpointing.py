"""Gradient checkpointing (`torch_impl.training.checkpoint_layers`, `tf_impl.training.checkpoint_layers`): the same numbers,
one extra forward of each layer, and the saved activations of one layer instead of L.

- training with `TrainConfig.checkpointing` ends on bit-identical weights in torch and Keras, in
  float64 and float32, with dropout on (the recomputation replays the supplied masks; without the
  replay it would not, and that planted change is caught);
- each layer really is run twice per step (its attention counted);
- FlopCounterMode counts exactly `costs.flops.recomputed` more: one forward of every layer;
- the peak of a training step by torch's allocator record drops by the analytic
  none-minus-full figure of `costs.memory.activations` (within 10%: the rest of the peak is transient).
"""
import contextlib
from functools import lru_cache

import numpy as np
import pytest

from conformance import build, training, weights
from conformance.backends.build import backend
from conformance.core import dropout_masks
from conformance.costs import flops, measure, memory
from conformance.spec import families, registry

CASES = {"bert-mlm": ("bert", "mlm"), "gpt2-causal_lm": ("gpt2", "causal_lm")}


@lru_cache(maxsize=None)
def _case(name):
    family, task = CASES[name]
    tcfg = training.TrainConfig(task=task, steps=2, seq_len=8)
    return (*training.setup(registry.get(family).tiny, task, tcfg), tcfg)


def _train(name, framework, dtype, checkpointing):
    cfg, w, batches, tcfg = _case(name)
    own = training.for_framework(tcfg, framework).replace(checkpointing=checkpointing)
    return training.train(framework, cfg, w, batches, own, dtype=dtype)


RUNS = [(name, framework, dtype) for name in CASES for framework in ("torch", "tf") for dtype in ("float64", "float32")]
DEFAULT = {("bert-mlm", "torch", "float64"), ("bert-mlm", "tf", "float64"),
           ("gpt2-causal_lm", "torch", "float32")}  # the rest in the --full tier


@pytest.mark.parametrize("name, framework, dtype", [r if r in DEFAULT else pytest.param(*r, marks=pytest.mark.full)
                                                    for r in RUNS])
def test_checkpointed_training_ends_on_bit_identical_weights(name, framework, dtype):
    plain, checkpointed = (_train(name, framework, dtype, c) for c in (False, True))
    param, error = training.worst(training.weight_errors(checkpointed.weights, plain.weights))
    assert error == 0.0, (param, error)
    assert checkpointed.grad_norms == plain.grad_norms and checkpointed.losses == plain.losses


def test_without_replayed_dropout_masks_the_gradients_differ(monkeypatch):
    """The planted bug: a recomputation that draws its own dropout masks. Caught."""
    plain = _train("bert-mlm", "torch", "float64", False)
    monkeypatch.setattr(dropout_masks, "replaying", lambda saved: contextlib.nullcontext())
    broken = _train("bert-mlm", "torch", "float64", True)
    assert training.worst(training.weight_errors(broken.weights, plain.weights))[1] > 1e-6


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_each_layer_runs_twice_per_step(framework):
    cfg, w, batches, tcfg = _case("bert-mlm")
    calls = {}
    for checkpointing in (False, True):
        own = training.for_framework(tcfg, framework).replace(checkpointing=checkpointing)
        step, built = training.trainer(framework, cfg, w, own)
        attention = built.submodule("encoder.0.attention")
        counted = []
        if framework == "torch":
            handle = attention.register_forward_hook(lambda *_: counted.append(1))
        else:
            original = attention.call
            attention.call = lambda *a, **k: (counted.append(1), original(*a, **k))[1]
        step.step(batches[:1])
        if framework == "torch":
            handle.remove()
        calls[checkpointing] = len(counted)
    assert calls == {False: 1, True: 2}


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_extra_flops_are_one_forward_of_every_layer(family):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    cfg = registry.get(family).tiny
    w = weights.initialize(cfg, seed=0)
    inputs = families.get(cfg.kind).inputs(cfg, 2, 16)
    counted = {}
    for checkpointing in (False, True):
        m = build("torch", cfg, w, dtype="float32", training=True, checkpointing=checkpointing)
        m.module.train()
        with FlopCounterMode(display=False) as counter:
            out = m.module(**m.backend.inputs(inputs, "float32"))
            sum(v.sum() for v in out.values()).backward()
        counted[checkpointing] = counter.get_total_flops()
    assert counted[True] - counted[False] == flops.recomputed(cfg, 2, 16)["matmul"] > 0
    assert torch.is_grad_enabled()


def test_peak_step_memory_drops_by_the_saved_activations_of_all_but_one_layer():
    cfg = registry.get("bert").tiny.replace(num_layers=4)
    tcfg = training.TrainConfig(task="mlm", micro_batch_size=8, seq_len=32)
    peaks = {c: measure.step_memory(cfg, "mlm", "torch", tcfg.replace(checkpointing=c))["peak_step_bytes"]
             for c in (False, True)}
    saved = memory.activations(training.task_config(cfg, "mlm"), 8, 32)["training"]
    analytic = saved["none"] - saved["full"]
    assert abs((peaks[False] - peaks[True]) - analytic) <= 0.1 * analytic, (peaks, saved)
    assert peaks[True] < 0.5 * peaks[False]


def test_checkpointing_is_refused_where_there_is_nothing_to_checkpoint():
    cfg = registry.get("bert").tiny
    w = weights.initialize(cfg, seed=0)
    with pytest.raises(ValueError, match=r"checkpointing=True needs a framework with autograd to checkpoint "
                                         r"\(torch, tf\); received framework='numpy'"):
        build("numpy", cfg, w, checkpointing=True)
    with pytest.raises(ValueError, match="checkpointing must be True or False; received checkpointing='yes'"):
        build("torch", cfg, w, checkpointing="yes")
    import torch
    for framework in ("torch", "tf"):
        module = build(framework, cfg, w).module
        assert backend(framework).enable_checkpointing(module) == [f"encoder.{i}" for i in range(cfg.num_layers)]
    with pytest.raises(ValueError, match="checkpointing needs a model with repeated layers .* received a Linear"):
        backend("torch").enable_checkpointing(torch.nn.Linear(2, 2))
