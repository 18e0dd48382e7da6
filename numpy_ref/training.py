"""One training step: cross-entropy losses, the learning-rate schedule, global-norm clipping, AdamW.

Shapes: B batch, T positions, V vocabulary, C classes, N counted positions.

Cross-entropy of logits z against label y, with a stable log-softmax:
    log p_i = z_i - max z - log sum_j exp(z_j - max z),      loss = -mean over counted of log p_y
A label of IGNORE_INDEX (-100, Hugging Face's convention) is not counted: the mean is over the
positions whose label is a class. Its gradient is (softmax(z) - onehot(y)) / N at counted
positions and 0 elsewhere.
    masked LM       logits (B, T, V), labels (B, T): -100 everywhere but the masked positions
    causal LM       logits[:, :-1] predict labels[:, 1:] (the shift is inside the loss, as Hugging
                    Face does it); padding is labelled -100
    classification  logits (B, C), labels (B,)

Schedule (Hugging Face's get_linear_schedule_with_warmup): the step s = 0, 1, ... update uses
    lr_s = lr * s / W                        s < W    (the first update of a warmup has lr 0)
    lr_s = lr * max(0, (S - s) / (S - W))    s >= W   (S total steps, W warmup steps)
and a parameter of layer depth l gets lr_s * decay^(L - l) (layer-wise decay, `layer_scale`).

Global-norm clipping: n = sqrt(sum over every gradient of sum g^2); every gradient is multiplied
by min(1, max_norm / (n + eps)). torch's clip_grad_norm_ has eps = 1e-6, Keras's global_clipnorm
and tf.clip_by_global_norm eps = 0: a relative difference of 1e-6 / n, visible in float64, so eps
is a TrainConfig field (`clip_epsilon`).

AdamW (Loshchilov & Hutter 2019), step t = 1, 2, ..., weight decay decoupled from the gradient:
    p <- p - lr wd p                                 (skipped for the TrainConfig's `no_decay` leaves)
    m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
    "bias_corrected" (torch.optim.AdamW, Kingma & Ba's Algorithm 1):
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    "eps_hat" (keras.optimizers.AdamW, Kingma & Ba's section 2 reformulation):
        p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)
The two are the same update with different epsilons: eps_hat = eps sqrt(1 - b2^t) in the first
form, 32x larger at t = 1 with b2 = 0.999. A parameter whose sqrt(v_hat) is not far above eps
moves differently; the reference implements both and names which (`epsilon_convention`).

Gradient accumulation: k micro-batches, each loss divided by k, gradients summed, one update.
"""
from __future__ import annotations

import math

import numpy as np

from conformance.core import dropout_masks
from numpy_ref import autograd

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------ losses

def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)                     # (N, V)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))      # (N, V)


def cross_entropy(logits, labels):
    """(loss, d loss / d logits): mean over labels != IGNORE_INDEX.  logits (..., V), labels (...)."""
    V = logits.shape[-1]
    z, y = logits.reshape(-1, V), labels.reshape(-1)                          # (N, V), (N,)
    counted = y != IGNORE_INDEX                                               # (N,)
    log_p = log_softmax(z)                                                    # (N, V)
    picked = np.take_along_axis(log_p, np.where(counted, y, 0)[:, None], axis=1)[:, 0]  # (N,)
    count = counted.sum()
    loss = -(picked * counted).sum() / count
    grad = np.exp(log_p)                                                      # (N, V) softmax
    grad[np.arange(len(y)), np.where(counted, y, 0)] -= 1                     # (N, V) softmax - onehot
    grad *= counted[:, None] / count                                          # (N, V)
    return loss, grad.reshape(logits.shape).astype(logits.dtype, copy=False)


def masked_lm_loss(logits, labels):
    return cross_entropy(logits, labels)                                      # (B, T, V), (B, T)


def causal_lm_loss(logits, labels):
    loss, grad = cross_entropy(logits[:, :-1], labels[:, 1:])                 # (B, T-1, V)
    return loss, np.concatenate([grad, np.zeros_like(logits[:, -1:])], axis=1)  # (B, T, V)


def classification_loss(logits, labels):
    return cross_entropy(logits, labels)                                      # (B, C), (B,)


LOSSES = {"mlm": masked_lm_loss, "causal_lm": causal_lm_loss, "classification": classification_loss}


# ------------------------------------------------------------------------------ schedule, clipping

def linear_warmup_decay(warmup_steps, total_steps):
    """The multiplier of the base learning rate at update s = 0, 1, ..."""
    def multiplier(s):
        if s < warmup_steps:
            return s / max(1, warmup_steps)
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))
    return multiplier


def clip_by_global_norm(grads, max_norm, eps):
    """(clipped grads, the norm before clipping); max_norm None: no clipping."""
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    if max_norm is None:
        return grads, norm
    scale = min(1.0, max_norm / (norm + eps))
    return {name: g * np.asarray(scale, g.dtype) for name, g in grads.items()}, norm


# ------------------------------------------------------------------------------ optimizer

class AdamW:
    """AdamW over a dict of parameters, updated in place; `groups` holds each one's `Group`."""

    def __init__(self, params, groups, tcfg):
        self.params, self.groups, self.tcfg = params, groups, tcfg
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}
        self.t = 0

    def step(self, grads, lr):
        tcfg = self.tcfg
        b1, b2, eps = tcfg.beta1, tcfg.beta2, tcfg.adam_epsilon
        self.t += 1
        t = self.t
        for name, g in grads.items():
            p, m, v = self.params[name], self.m[name], self.v[name]
            lr_p = lr * self.groups[name].lr_scale
            if self.groups[name].weight_decay:
                p -= lr_p * tcfg.weight_decay * p
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            if tcfg.epsilon_convention == "bias_corrected":
                p -= lr_p * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            else:  # "eps_hat"
                p -= lr_p * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)


# ------------------------------------------------------------------------------ the step

class Trainer:
    """Runs training steps of `model` (a numpy_ref model) with the TrainConfig `tcfg`.

    `params`: canonical weight name -> the model's array; `groups`: canonical weight name ->
    `conformance.training.Group` (lr scale, decayed, trainable); `built` its
    `conformance.backends.Built`. A frozen parameter still gets a gradient from the tape; it is
    not updated.
    """

    def __init__(self, model, params, groups, tcfg, built):
        self.model, self.groups, self.tcfg = model, groups, tcfg
        self.trainable = {name: p for name, p in params.items() if groups[name].trainable}
        self.loss = LOSSES[tcfg.task]
        self.multiplier = linear_warmup_decay(tcfg.warmup_steps, tcfg.total)
        self.optimizer = AdamW(self.trainable, groups, tcfg)
        self.updates = 0

    def step(self, micro_batches):
        """One update from k micro-batches (dicts of NumPy arrays with "labels"): (loss, lr, norm)."""
        tcfg, k = self.tcfg, len(micro_batches)
        self.model.train()
        grads = {name: np.zeros_like(p) for name, p in self.trainable.items()}
        total = 0.0
        for i, batch in enumerate(micro_batches):
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            with dropout_masks.supplying(self.model.named_modules(), tcfg.dropout_seed, self.updates * k + i), \
                    autograd.recording(self.model) as tape:
                out = self.model(**inputs)
            loss, dlogits = self.loss(out["logits"], batch["labels"])
            cotangent = {"logits": dlogits / k}
            if "aux_loss" in out:  # a mixture of experts: + coef x its load-balancing loss, as transformers' Mixtral
                coef = self.model.cfg.router_aux_loss_coef
                loss = loss + coef * float(out["aux_loss"])
                cotangent["aux_loss"] = np.asarray(coef / k, out["aux_loss"].dtype)
            tape.backward(cotangent)
            for name in grads:
                grads[name] += tape.param_grads[name]
            total += loss / k
        grads, norm = clip_by_global_norm(grads, tcfg.max_grad_norm, tcfg.clip_epsilon)
        lr = tcfg.learning_rate * self.multiplier(self.updates)
        self.optimizer.step(grads, lr)
        self.updates += 1
        return float(total), lr, norm
