"""Mirrors `numpy_ref.training`.

Differs:
- cross_entropy is `keras.losses.SparseCategoricalCrossentropy(from_logits=True,
  ignore_class=-100)`: it zeroes the ignored positions and divides by the number counted, the
  same mean as torch's ignore_index (measured equal to 4e-16 in float64). Its `dtype` must be
  given: the default (floatx, float32) would compute a float64 run's loss in float32. With no
  counted position it gives 0, not NaN (the harness never hands it such a batch). Mixed-precision
  logits are cast to float32 first. `tf.GradientTape` gives the gradient.
- The schedule is a `keras.optimizers.schedules.LearningRateSchedule` of `optimizer.iterations`
  (0 at the first update, as LambdaLR's step), computed in float64.
- Clipping is `tf.clip_by_global_norm`: scale min(1, max_norm / n), no epsilon (`clip_epsilon`
  must be 0).
- The optimizer is `keras.optimizers.AdamW`: the "eps_hat" epsilon convention only. Its betas and
  weight decay are handed over as tensors of the variables' dtype: given as Python floats, Adam's
  `ops.cast(self.beta_2, variable.dtype)` converts them to float32 first (0.999 -> 0.99900001287),
  so 1 - beta_2 is off by 1.3e-5 and a float64 run's first update by 6e-6 relative (the float64
  trap of keras.ops.gelu's constants again; test_training pins it). No-decay
  variables go to `exclude_from_weight_decay(var_list=...)`. Layer-wise scales: one AdamW per
  scale, each with its own schedule lr x scale (an optimizer has one learning rate; this is exact,
  and each one's `iterations` counts the same updates). Clipping is done here, over every
  gradient at once, before any optimizer sees them: an optimizer's own `global_clipnorm` would
  clip each scale's group alone. Frozen variables get `trainable = False` and no gradient.
- Accumulation: explicit, summing `tape.gradient(loss / k)` over micro-batches (embedding
  gradients arrive as IndexedSlices and are made dense). The optimizers'
  `gradient_accumulation_steps` is not used: it keeps the running mean of k `apply` calls, the
  same math, but it counts an `iterations` step per micro-batch, so the schedule would see
  micro-batch steps.
- Mixed precision: the model's dtype policy (`mixed_bfloat16`) computes in bfloat16 with float32
  variables; gradients arrive in float32. mixed_float16 (which needs loss scaling) is not offered.
Not here: `AdamW.__init__`, `AdamW.step`, `log_softmax` (the library's own optimizer and loss).
Own lines: `cross_entropy`, `causal_lm_loss` (the loss alone: autograd gives the gradient the reference writes out).
Only here: `Schedule`, `Schedule.__init__` (the LearningRateSchedule of `optimizer.iterations`),
  `checkpoint_layers` (gradient checkpointing, as torch_impl's).
- Gradient checkpointing: each repeated layer's `call` runs under `keras.remat` (`tf.recompute_grad`
  on TensorFlow, `jax.checkpoint` on JAX). Keras hands `training` to sublayers through a call
  context that exists only while a model call runs; the recomputation runs inside `tape.gradient`,
  after it has closed, so the wrapper reopens one with the forward's `training` value (Keras's
  `Layer._get_call_context`; without it the recomputed Dropouts would run in inference mode), and the
  supplied dropout masks are replayed as in torch.
"""
from __future__ import annotations

import functools
import re

import keras
import tensorflow as tf
from keras import ops
from keras.src.backend.common import global_state

from conformance.core import dropout_masks
from tf_impl import _layer

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------ losses

def cross_entropy(logits, labels):
    dtype = "float64" if logits.dtype == "float64" else "float32"
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_INDEX, dtype=dtype)
    return loss(labels, ops.cast(logits, dtype))                              # (..., V), (...)


def masked_lm_loss(logits, labels):
    return cross_entropy(logits, labels)                                      # (B, T, V), (B, T)


def causal_lm_loss(logits, labels):
    return cross_entropy(logits[:, :-1], labels[:, 1:])                       # (B, T-1, V)


def classification_loss(logits, labels):
    return cross_entropy(logits, labels)                                      # (B, C), (B,)


LOSSES = {"mlm": masked_lm_loss, "causal_lm": causal_lm_loss, "classification": classification_loss}


# ------------------------------------------------------------------------------ schedule, clipping

def linear_warmup_decay(warmup_steps, total_steps):
    def multiplier(s):
        s = ops.cast(s, "float64")
        warmup = s / max(1, warmup_steps)
        decay = ops.maximum(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))
        return ops.where(s < warmup_steps, warmup, decay)
    return multiplier


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr x multiplier(iterations), in float64 (cast to each variable's dtype by the optimizer)."""

    def __init__(self, learning_rate, multiplier):
        self.learning_rate, self.multiplier = learning_rate, multiplier

    def __call__(self, step):
        return self.learning_rate * self.multiplier(step)


def clip_by_global_norm(grads, max_norm):
    """(clipped grads, the norm before clipping); max_norm None: no clipping."""
    if max_norm is None:
        return grads, float(tf.linalg.global_norm(grads))
    clipped, norm = tf.clip_by_global_norm(grads, max_norm)
    return clipped, float(norm)


# ------------------------------------------------------------------------------ optimizer

def AdamW(named, groups, tcfg):  # noqa: N802 (builds Keras's own AdamW, one per lr scale)
    """{lr scale: (keras.optimizers.AdamW, [canonical names])}."""
    multiplier = linear_warmup_decay(tcfg.warmup_steps, tcfg.total)
    by_scale = {}
    for name in named:
        by_scale.setdefault(groups[name].lr_scale, []).append(name)
    dtype = next(iter(named.values())).dtype
    exact = lambda x: ops.convert_to_tensor(x, dtype)  # noqa: E731 (a Python float goes through float32)
    optimizers = {}
    for scale, names in by_scale.items():
        optimizer = keras.optimizers.AdamW(
            learning_rate=Schedule(tcfg.learning_rate * scale, multiplier), weight_decay=exact(tcfg.weight_decay),
            beta_1=exact(tcfg.beta1), beta_2=exact(tcfg.beta2), epsilon=tcfg.adam_epsilon)
        no_decay = [named[name] for name in names if not groups[name].weight_decay]
        if no_decay:
            optimizer.exclude_from_weight_decay(var_list=no_decay)
        optimizers[scale] = (optimizer, names)
    return optimizers


# ------------------------------------------------------------------------------ the step

class Trainer:
    """Mirrors `numpy_ref.training.Trainer`; `model` is a tf_impl model, `built` its
    `conformance.backends.Built` (for the dtype)."""

    def __init__(self, model, params, groups, tcfg, built):
        if built.dtype == "mixed_float16":
            raise NotImplementedError("tf_impl trains mixed_float16 without loss scaling, so it is not offered: "
                                      "keras.optimizers.LossScaleOptimizer unscales inside apply(), after the "
                                      "clipping done here over every group; use mixed_bfloat16")
        self.model, self.groups, self.tcfg, self.built = model, groups, tcfg, built
        for name, variable in params.items():
            variable.trainable = groups[name].trainable
        self.trainable = {name: v for name, v in params.items() if groups[name].trainable}
        self.loss = LOSSES[tcfg.task]
        self.multiplier = linear_warmup_decay(tcfg.warmup_steps, tcfg.total)
        self.optimizer = AdamW(self.trainable, groups, tcfg)
        self.updates = 0

    def step(self, micro_batches):
        tcfg, k = self.tcfg, len(micro_batches)
        names, variables = list(self.trainable), list(self.trainable.values())
        grads = [ops.zeros(v.shape, v.dtype) for v in variables]
        total = 0.0
        for i, batch in enumerate(micro_batches):
            tensors = self.built.backend.inputs(batch, self.built.dtype)
            labels = tensors.pop("labels")
            with dropout_masks.supplying(_layer.named_layers(self.model), tcfg.dropout_seed, self.updates * k + i), \
                    tf.GradientTape() as tape:
                out = self.model(**tensors, training=True)
                loss = self.loss(out["logits"], labels)
                if "aux_loss" in out:  # a mixture of experts: + coef x its load-balancing loss
                    loss = loss + self.model.cfg.router_aux_loss_coef * out["aux_loss"]
                scaled = loss / k  # inside the tape: an op outside it is not recorded
            micro = tape.gradient(scaled, variables)
            grads = [g + tf.convert_to_tensor(m) for g, m in zip(grads, micro)]
            total += float(loss) / k
        grads, norm = clip_by_global_norm(grads, tcfg.max_grad_norm)
        by_name = dict(zip(names, grads))
        lr = tcfg.learning_rate * float(self.multiplier(self.updates))
        for optimizer, group in self.optimizer.values():
            optimizer.apply([by_name[name] for name in group], [self.trainable[name] for name in group])
        self.updates += 1
        return total, lr, norm


# ------------------------------------------------------------------------------ gradient checkpointing

_LAYER = re.compile(r"^(encoder|decoder|layers)\.\d+$")  # the repeated blocks of every family


def _repeated_layers(model) -> list:
    """(path, layer) of every repeated layer of `model`."""
    return [(path, m) for path, m in _layer.named_layers(model) if _LAYER.match(path)]


def checkpoint_layers(model) -> list[str]:
    """Checkpoint every repeated layer of `model` in place; the paths."""
    found = _repeated_layers(model)
    if not found:
        raise ValueError(f"checkpointing needs a model with repeated layers (encoder.i, decoder.i, layers.i); "
                         f"received a {type(model).__name__} with none")
    for _, layer in found:
        if not isinstance(layer.call, functools.partial):  # already enabled
            layer.call = functools.partial(_checkpointed, layer, layer.call)
    return [path for path, _ in found]


def _checkpointed(layer, call, *args, **kwargs):
    context = global_state.get_global_attribute("current_call_ctx")
    training = None if context is None else context.training
    saved = dropout_masks.snapshot()
    calls = []

    def run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the forward itself, inside the model's call
            return call(*args, **kwargs)
        context = layer._get_call_context()  # the recomputation: no model call is open
        context.training = training
        try:
            with dropout_masks.replaying(saved):
                return call(*args, **kwargs)
        finally:
            layer._maybe_reset_call_context()

    return keras.remat(run)(*args, **kwargs)
