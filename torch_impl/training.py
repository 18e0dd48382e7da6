"""Mirrors `numpy_ref.training`.

Differs:
- cross_entropy is `F.cross_entropy(ignore_index=-100)` (mean over counted positions, the same
  rule); autograd gives its gradient, so the losses return the loss alone. With no counted
  position it gives NaN (the harness never hands it such a batch).
- The schedule is `torch.optim.lr_scheduler.LambdaLR` over `linear_warmup_decay`; layer-wise
  scales are param groups whose initial lr is lr x scale (LambdaLR multiplies each group's own).
- Clipping is `torch.nn.utils.clip_grad_norm_` (eps 1e-6, built in: `clip_epsilon` must be 1e-6).
- The optimizer is `torch.optim.AdamW`: the "bias_corrected" epsilon convention only; no-decay
  parameters are a param group with weight_decay 0. Frozen parameters get requires_grad False
  and are left out of the optimizer.
- Accumulation: each micro-batch's loss / k is backpropagated; `.grad` sums them.
- Mixed precision: the forward and the loss run under `torch.autocast` (`built.policy()`);
  the loss itself runs in float32 (autocast's rule for cross_entropy); "mixed_float16" also scales the loss with `torch.amp.GradScaler` (dynamic: a step whose
  gradients are not finite is skipped and the scale halved; it is unscaled before clipping).
Not here: `AdamW.__init__`, `AdamW.step`, `log_softmax` (the library's own optimizer and loss).
Own lines: `cross_entropy`, `causal_lm_loss` (the loss alone: autograd gives the gradient the reference writes out).
Only here: `checkpoint_layers` (gradient checkpointing: the reference's hand-written backward keeps
  what its forward tapped, and has no autograd graph to checkpoint).

Gradient checkpointing (`checkpoint_layers(model)`, `build(..., checkpointing=True)`): every repeated
layer (encoder.i, decoder.i, layers.i) runs under `torch.utils.checkpoint` (non-reentrant) and keeps
only its inputs through the forward; backward runs the layer's forward again to rebuild what its own
backward needs, one layer at a time. Saved activations drop from L layers' worth to the layer inputs
plus one layer's; the price is one extra forward of every layer (`conformance.costs.flops.recomputed`).
The numbers are unchanged (the recomputation runs the same kernels on the same inputs). Dropout drops
the same units in the recomputation: torch's own generator through `preserve_rng_state`, supplied
masks (`conformance.core.dropout_masks`) through a snapshot of the provider's call counts taken at
the forward and replayed in the recompute (`context_fn`): backward runs after `supplying` has ended.
Without autograd (inference) a layer runs as it is.
"""
from __future__ import annotations

import contextlib
import functools
import re

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from conformance.core import dropout_masks

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------ losses

def cross_entropy(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX)  # (N, V), (N,)


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
        if s < warmup_steps:
            return s / max(1, warmup_steps)
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))
    return multiplier


def clip_by_global_norm(params, max_norm):
    """Clips the `.grad` of `params` in place; returns the norm before clipping."""
    if max_norm is None:
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


# ------------------------------------------------------------------------------ optimizer

def AdamW(named, groups, tcfg):  # noqa: N802 (builds torch's own AdamW)
    """torch.optim.AdamW with one param group per (lr scale, decayed) pair."""
    by_group = {}
    for name, p in named.items():
        group = groups[name]
        by_group.setdefault((group.lr_scale, group.weight_decay), []).append(p)
    param_groups = [{"params": params, "lr": tcfg.learning_rate * scale, "lr_scale": scale,
                     "weight_decay": tcfg.weight_decay if decayed else 0.0}
                    for (scale, decayed), params in by_group.items()]
    return torch.optim.AdamW(param_groups, lr=tcfg.learning_rate, betas=(tcfg.beta1, tcfg.beta2),
                             eps=tcfg.adam_epsilon)


# ------------------------------------------------------------------------------ the step

class Trainer:
    """Mirrors `numpy_ref.training.Trainer`; `model` is a torch_impl model, `built` its
    `conformance.backends.Built` (for the dtype policy)."""

    def __init__(self, model, params, groups, tcfg, built):
        self.model, self.groups, self.tcfg, self.built = model, groups, tcfg, built
        for name, p in params.items():
            p.requires_grad_(groups[name].trainable)
        self.trainable = {name: p for name, p in params.items() if groups[name].trainable}
        self.loss = LOSSES[tcfg.task]
        self.multiplier = linear_warmup_decay(tcfg.warmup_steps, tcfg.total)
        self.optimizer = AdamW(self.trainable, groups, tcfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.multiplier)
        self.scaler = torch.amp.GradScaler(built.device, init_scale=tcfg.loss_scale) \
            if built.dtype == "mixed_float16" else None
        self.updates = 0

    def step(self, micro_batches):
        tcfg, k = self.tcfg, len(micro_batches)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, batch in enumerate(micro_batches):
            tensors = self.built.backend.inputs(batch, self.built.dtype, self.built.device)
            labels = tensors.pop("labels")
            with dropout_masks.supplying(self.model.named_modules(), tcfg.dropout_seed, self.updates * k + i), \
                    self.built.policy():
                out = self.model(**tensors)
                loss = self.loss(out["logits"], labels)
                if "aux_loss" in out:  # a mixture of experts: + coef x its load-balancing loss
                    loss = loss + self.model.cfg.router_aux_loss_coef * out["aux_loss"]
            scaled = loss / k if self.scaler is None else self.scaler.scale(loss / k)
            scaled.backward()
            total += float(loss.detach()) / k
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = clip_by_global_norm(list(self.trainable.values()), tcfg.max_grad_norm)
        group = self.optimizer.param_groups[0]
        lr = group["lr"] / group["lr_scale"]  # the base rate LambdaLR set for this update
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.updates += 1
        return total, lr, norm


# ------------------------------------------------------------------------------ gradient checkpointing

_LAYER = re.compile(r"^(encoder|decoder|layers)\.\d+$")  # the repeated blocks of every family


def _repeated_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of every repeated layer of `model`."""
    return [(path, m) for path, m in model.named_modules() if _LAYER.match(path)]


def checkpoint_layers(model) -> list[str]:
    """Checkpoint every repeated layer of `model` in place; the paths."""
    found = _repeated_layers(model)
    if not found:
        raise ValueError(f"checkpointing needs a model with repeated layers (encoder.i, decoder.i, layers.i); "
                         f"received a {type(model).__name__} with none")
    for _, layer in found:
        if not isinstance(layer.forward, functools.partial):  # already enabled
            layer.forward = functools.partial(_checkpointed, layer.forward)
    return [path for path, _ in found]


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    saved = dropout_masks.snapshot()
    return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True,
                      context_fn=lambda: (contextlib.nullcontext(), dropout_masks.replaying(saved)), **kwargs)
