"""Mirrors `torch_impl.checkpointing`.

Differs: each layer's `call` runs under `keras.remat` (`tf.recompute_grad` on TensorFlow,
`jax.checkpoint` on JAX): the layer's outputs are kept, its insides recomputed when the tape asks
for gradients. Keras hands `training` to sublayers through a call context that exists only
while a model call runs; the recomputation runs inside `tape.gradient`, after it has closed, so
the wrapper reopens one with the forward's `training` value (Keras's `Layer._get_call_context`),
and the supplied dropout masks are replayed as in torch.
"""
from __future__ import annotations

import functools
import re

import keras
from keras.src.backend.common import global_state

from conformance.core import dropout_masks
from tf_impl import _layer

LAYER = re.compile(r"^(encoder|decoder|layers)\.\d+$")  # the repeated blocks of every family


def layers(model) -> list:
    """(path, layer) of every repeated layer of `model`."""
    return [(path, m) for path, m in _layer.named_layers(model) if LAYER.match(path)]


def enable(model) -> list[str]:
    """Checkpoint every repeated layer of `model` in place; the paths."""
    found = layers(model)
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
