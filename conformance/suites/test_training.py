"""The training step: each piece against the NumPy reference, then whole runs after N steps.

Pieces (float64, no model): the losses and their gradients, the schedule, clipping and AdamW,
each library against `numpy_ref.training`; AdamW and clipping match the reference only under
the library's own convention, and the other convention is caught. Dropout masks supplied from
NumPy make all three frameworks drop the same units. Whole runs: weights after N steps agree
with the reference within the training rows of `conformance.compare.tolerance`.
"""
import numpy as np
import pytest
import torch

from conformance.core import dropout_masks
from conformance.spec import presets
from conformance import training, weights
from conformance.backends.build import build
from conformance.spec.components import TINY
from numpy_ref import training as np_training
from torch_impl import training as torch_training

TASK_SHAPES = {"mlm": ((2, 5, 11), (2, 5)), "causal_lm": ((2, 5, 11), (2, 5)), "classification": ((4, 3), (4,))}


def _labels(rng, task, shape, classes):
    labels = rng.integers(0, classes, shape)
    if task != "classification":
        labels[0, :2] = training.IGNORE_INDEX  # ignored positions (and the causal shift drops column 0)
    return labels


@pytest.mark.parametrize("task", list(TASK_SHAPES))
def test_losses_and_their_gradient_match_torch_and_keras(task):
    from tf_impl import training as tf_training
    rng = np.random.default_rng(0)
    logits_shape, label_shape = TASK_SHAPES[task]
    logits, labels = 3 * rng.standard_normal(logits_shape), _labels(rng, task, label_shape, logits_shape[-1])
    loss, grad = np_training.LOSSES[task](logits, labels)
    z = torch.tensor(logits, requires_grad=True)
    torch_loss = torch_training.LOSSES[task](z, torch.tensor(labels))
    torch_loss.backward()
    keras_loss = float(tf_training.LOSSES[task](logits, labels))
    assert abs(float(torch_loss.detach()) - loss) <= 1e-12 * abs(loss)
    assert abs(keras_loss - loss) <= 1e-12 * abs(loss)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=0, atol=1e-15)
    if task == "causal_lm":
        assert not grad[:, -1].any()  # the last position predicts nothing


def test_schedule_is_the_same_at_every_step():
    from tf_impl import training as tf_training
    W, S, lr = 3, 8, 1e-3
    reference = [lr * np_training.linear_warmup_decay(W, S)(s) for s in range(S + 2)]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, torch_training.linear_warmup_decay(W, S))
    torch_lrs = []
    for _ in range(S + 2):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    keras = tf_training.Schedule(lr, tf_training.linear_warmup_decay(W, S))
    keras_lrs = [float(keras(s)) for s in range(S + 2)]
    assert reference[0] == 0.0 and reference[W] == lr and reference[S] == 0.0
    assert torch_lrs == reference and keras_lrs == reference


def _grads(rng):
    return {"a.kernel": rng.standard_normal((4, 3)), "a.bias": 1e-3 * rng.standard_normal(3)}


def test_clipping_matches_each_library_under_its_own_epsilon_only():
    import tensorflow as tf
    rng = np.random.default_rng(1)
    grads = _grads(rng)
    max_norm = 1.0
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads.values()]
    for p, g in zip(params, grads.values()):
        p.grad = torch.tensor(g)
    torch_norm = torch_training.clip_by_global_norm(params, max_norm)
    tf_clipped, tf_norm = tf.clip_by_global_norm([tf.constant(g) for g in grads.values()], max_norm)
    for eps, library in ((1e-6, [p.grad.numpy() for p in params]), (0.0, [t.numpy() for t in tf_clipped])):
        ours, norm = np_training.clip_by_global_norm(grads, max_norm, eps)
        other, _ = np_training.clip_by_global_norm(grads, max_norm, 1e-6 - eps)
        assert abs(norm - torch_norm) <= 1e-14 * norm and abs(norm - float(tf_norm)) <= 1e-14 * norm
        for ref, lib, wrong in zip(ours.values(), library, other.values()):
            assert np.abs(lib - ref).max() <= 1e-15 * np.abs(ref).max()
        worst = max(np.abs(lib - wrong).max() / np.abs(wrong).max() for lib, wrong in zip(library, other.values()))
        assert worst > 1e-7  # 1e-6 / norm: the other library's convention is caught in float64


def _adamw_runs(tcfg, steps=4):
    """The same gradient sequence through torch's AdamW, Keras's AdamW and the reference under both
    conventions. One parameter has gradients near eps, where the conventions part."""
    import keras
    from tf_impl import training as tf_training
    rng = np.random.default_rng(2)
    params = {"a.kernel": rng.standard_normal((4, 3)), "a.bias": rng.standard_normal(3),
              "b.kernel": rng.standard_normal((3, 2))}
    grad_seq = [{"a.kernel": rng.standard_normal((4, 3)), "a.bias": rng.standard_normal(3),
                 "b.kernel": 1e-8 * rng.standard_normal((3, 2))} for _ in range(steps)]
    groups = {"a.kernel": training.Group(1.0, True, True), "a.bias": training.Group(1.0, False, True),
              "b.kernel": training.Group(0.5, True, True)}  # a no-decay leaf and a second lr scale
    multiplier = np_training.linear_warmup_decay(tcfg.warmup_steps, tcfg.total)
    reference = {}
    for convention in training.EPSILON_CONVENTIONS:
        p = {k: v.copy() for k, v in params.items()}
        opt = np_training.AdamW(p, groups, tcfg.replace(epsilon_convention=convention))
        for s, g in enumerate(grad_seq):
            opt.step(g, tcfg.learning_rate * multiplier(s))
        reference[convention] = p
    tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    topt = torch_training.AdamW(tp, groups, tcfg)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, torch_training.linear_warmup_decay(tcfg.warmup_steps, tcfg.total))
    for g in grad_seq:
        for k, v in tp.items():
            v.grad = torch.tensor(g[k])
        topt.step(), sched.step()
    kp = {k: keras.Variable(v, dtype="float64") for k, v in params.items()}
    optimizers = tf_training.AdamW(kp, groups, tcfg)
    for g in grad_seq:
        for optimizer, names in optimizers.values():
            optimizer.apply([g[n] for n in names], [kp[n] for n in names])
    libraries = {"torch": {k: v.detach().numpy() for k, v in tp.items()},
                 "tf": {k: keras.ops.convert_to_numpy(v) for k, v in kp.items()}}
    return reference, libraries


def test_adamw_matches_each_library_only_under_its_own_epsilon_convention():
    tcfg = training.TrainConfig(steps=4, warmup_steps=1, learning_rate=1e-2, weight_decay=0.1)
    reference, libraries = _adamw_runs(tcfg)
    for framework, own in (("torch", "bias_corrected"), ("tf", "eps_hat")):
        other = "eps_hat" if own == "bias_corrected" else "bias_corrected"
        match = training.weight_errors(libraries[framework], reference[own])
        mismatch = training.weight_errors(libraries[framework], reference[other])
        assert max(match.values()) <= 1e-15, (framework, match)
        assert mismatch["b.kernel"] > 1e-4, (framework, mismatch)  # gradients near eps: a large step apart
        # gradients of size 1 still part by about lr eps (1 / sqrt(1 - b2^t) - 1): 1e-8 here, 1e6 x float64 rounding
        assert min(mismatch.values()) > 1e-10, (framework, mismatch)


def test_dropout_masks_supplied_from_numpy_drop_the_same_units_everywhere():
    cfg = TINY.replace(kind="encoder_layer", dropout=0.3)
    w = weights.initialize(cfg, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 5, cfg.d_model))
    outs = {}
    for framework in ("numpy", "torch", "tf"):
        m = build(framework, cfg, w, dtype="float64", training=True)
        with dropout_masks.supplying(m.backend.named_modules(m.module), seed=7, step=3):
            outs[framework] = m(x=x)["output"]
        with dropout_masks.supplying(m.backend.named_modules(m.module), seed=8, step=3):
            other_seed = m(x=x)["output"]
        assert np.abs(other_seed - outs[framework]).max() > 1e-3  # the masks follow the seed
    np.testing.assert_allclose(outs["torch"], outs["numpy"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(outs["tf"], outs["numpy"], rtol=1e-12, atol=1e-12)


def test_dropout_masks_depend_on_path_step_and_call_only():
    class Unit:
        pass
    a, b = Unit(), Unit()
    with dropout_masks.supplying([("x.dropout", a), ("y.dropout", b)], seed=0, step=0):
        first, second, other = dropout_masks.keep(a, (50,), 0.5), dropout_masks.keep(a, (50,), 0.5), \
            dropout_masks.keep(b, (50,), 0.5)
    with dropout_masks.supplying([("x.dropout", a)], seed=0, step=0):
        again = dropout_masks.keep(a, (50,), 0.5)
    assert (first == again).all() and (first != second).any() and (first != other).any()
    with dropout_masks.supplying([], seed=0, step=0), pytest.raises(ValueError, match="module tree"):
        dropout_masks.keep(a, (3,), 0.5)


def test_keras_adamw_rounds_python_float_betas_through_float32():
    """The trap tf_impl.training.AdamW avoids by handing Keras float64 tensors: named and pinned."""
    import keras
    p0, g = np.array([1.0, -2.0]), np.array([0.05, 1.0])
    tcfg = training.TrainConfig(learning_rate=1e-2, weight_decay=0.0, warmup_steps=0, epsilon_convention="eps_hat")
    reference = {"x.bias": p0.copy()}
    np_training.AdamW(reference, {"x.bias": training.Group(1.0, False, True)}, tcfg).step({"x.bias": g}, 1e-2)
    from tf_impl import training as tf_training
    lr = tf_training.Schedule(1e-2, lambda step: keras.ops.ones((), "float64"))  # a float64 rate
    for betas, expected in (((0.9, 0.999), "off"), ((keras.ops.convert_to_tensor(0.9, "float64"),
                                                    keras.ops.convert_to_tensor(0.999, "float64")), "exact")):
        v = keras.Variable(p0, dtype="float64")
        keras.optimizers.AdamW(learning_rate=lr, weight_decay=0.0, beta_1=betas[0], beta_2=betas[1],
                               epsilon=1e-8).apply([g], [v])
        error = np.abs(keras.ops.convert_to_numpy(v) - reference["x.bias"]).max()
        assert (error > 1e-8) if expected == "off" else (error < 1e-15), (expected, error)


# ------------------------------------------------------------------------------ whole runs

from functools import lru_cache  # noqa: E402

from conformance.spec import registry  # noqa: E402
from conformance.compare.tolerance import training_tolerance  # noqa: E402

TINY_CASES = {"bert-mlm": (registry.get("bert").tiny, "mlm"),
              "bert-classification": (registry.get("bert").tiny, "classification"),
              "gpt2-causal_lm": (registry.get("gpt2").tiny, "causal_lm")}
STEPS = 3


@lru_cache(maxsize=None)
def _case(name, **changes):
    model, task = TINY_CASES[name]
    tcfg = training.TrainConfig(task=task, steps=STEPS, seq_len=8, **dict(changes))
    return (*training.setup(model, task, tcfg), tcfg)


@lru_cache(maxsize=None)
def _reference(name, framework, **changes):
    cfg, w, batches, tcfg = _case(name, **changes)
    return training.train("numpy", cfg, w, batches, training.for_framework(tcfg, framework))


@pytest.mark.parametrize("name", list(TINY_CASES))
def test_weights_after_n_steps_match_the_reference(name, framework, dtype):
    """Same weights, batches and dropout masks: after N AdamW steps every weight is within the
    training row of its dtype, against the float64 reference run under this framework's conventions."""
    cfg, w, batches, tcfg = _case(name)
    run = training.train(framework, cfg, w, batches, training.for_framework(tcfg, framework), dtype=dtype)
    ref = _reference(name, framework)
    errors = training.weight_errors(run.weights, ref.weights)
    tol = training_tolerance(dtype)
    param, error = training.worst(errors)
    assert error <= tol.atol, f"{framework} {dtype} {name}: {param} off by {error:.3g} after {STEPS} steps (> {tol.atol:g})"
    assert run.lrs == ref.lrs
    np.testing.assert_allclose(run.losses, ref.losses, rtol=tol.atol * 10, atol=0)
    assert training.worst(training.moved(w, ref.weights))[1] > 100 * tol.atol  # the weights did move


def test_accumulating_two_micro_batches_equals_one_batch_of_both():
    """Classification counts one label a row, so the mean over k micro-batches of 1 row equals the
    mean over one batch of k rows; dropout off (masks are drawn per micro-batch shape)."""
    model, task = TINY_CASES["bert-classification"]
    model = model.replace(dropout=0.0)
    tcfg = training.TrainConfig(task=task, steps=2, micro_batch_size=2, seq_len=8, max_grad_norm=None)
    cfg, w, batches, _ = (*training.setup(model, task, tcfg), tcfg)
    split = [{k: v[i:i + 1] for k, v in b.items()} for b in batches for i in range(2)]
    accumulated = tcfg.replace(micro_batch_size=1, accumulation_steps=2)
    for framework in ("numpy", "torch", "tf"):
        one = training.train(framework, cfg, w, batches, training.for_framework(tcfg, framework))
        two = training.train(framework, cfg, w, split, training.for_framework(accumulated, framework))
        param, error = training.worst(training.weight_errors(two.weights, one.weights))
        assert error <= 1e-12, (framework, param, error)


def test_frozen_base_trains_the_head_only_and_layer_decay_scales_the_lr():
    for changes in ({"frozen_base": True}, {"layer_decay": 0.5}):
        cfg, w, batches, tcfg = _case("bert-classification", **changes)
        ref = _reference("bert-classification", "numpy", **changes)
        for framework in ("torch", "tf"):
            run = training.train(framework, cfg, w, batches, training.for_framework(tcfg, framework))
            param, error = training.worst(training.weight_errors(run.weights, _reference(
                "bert-classification", framework, **changes).weights))
            assert error <= training_tolerance("float64").atol, (changes, framework, param, error)
        moved = training.moved(w, ref.weights)
        if changes.get("frozen_base"):
            assert all(moved[n] == 0.0 for n in moved if n.split(".")[0] in training.BASE)
            assert moved["classifier.kernel"] > 0 and moved["pooler.kernel"] > 0
    groups = training.groups(cfg, tcfg.replace(layer_decay=0.5))
    assert groups["embeddings.token.table"].lr_scale == 0.25 and groups["encoder.0.attention.query.kernel"].lr_scale == 0.5
    assert groups["encoder.1.feed_forward.outer.bias"].lr_scale == 1.0 == groups["classifier.kernel"].lr_scale
    assert not groups["encoder.1.feed_forward.outer.bias"].weight_decay and groups["classifier.kernel"].weight_decay


def test_mixed_bfloat16_drifts_from_float32_and_stays_finite():
    """Mixed precision's drift is measured (`training.mixed_precision_drift`), not bounded here:
    it must be a real, finite difference (autocast and the Keras policy did engage)."""
    cfg, w, batches, tcfg = _case("gpt2-causal_lm")
    for framework in ("torch", "tf"):
        own = training.for_framework(tcfg, framework)
        fp32 = training.train(framework, cfg, w, batches, own, dtype="float32")
        mixed = training.train(framework, cfg, w, batches, own, dtype="mixed_bfloat16")
        error = training.worst(training.weight_errors(mixed.weights, fp32.weights))[1]
        assert np.isfinite(error) and error > 1e-7, (framework, error)
