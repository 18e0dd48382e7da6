"""Gradient checkpointing for torch_impl models: each layer's activations recomputed in backward.

    layers = checkpointing.enable(model)    # every encoder.i / decoder.i / layers.i, in place

A checkpointed layer keeps only its inputs through the forward (`torch.utils.checkpoint`,
non-reentrant); backward runs the layer's forward again to rebuild what its own backward needs,
one layer at a time. Saved activations drop from L layers' worth to the layer inputs plus one
layer's worth; the price is one extra forward of every checkpointed layer (`conformance.costs.memory`
"full recomputation"). The numbers are unchanged: the recomputation runs the same kernels on
the same inputs.

Dropout draws the same units in the recomputation: torch's own generator through
`preserve_rng_state`, supplied masks (`conformance.core.dropout_masks`) through a snapshot of the
provider's call counts taken at the forward and replayed in the recompute (`context_fn`). Without
autograd (inference) a layer runs as it is.

No numpy_ref twin: the reference's hand-written backward keeps every tensor it tapped, and
memory is not what it is for.
"""
from __future__ import annotations

import contextlib
import functools
import re

import torch
from torch.utils.checkpoint import checkpoint

from conformance.core import dropout_masks

LAYER = re.compile(r"^(encoder|decoder|layers)\.\d+$")  # the repeated blocks of every family


def layers(model) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of every repeated layer of `model`."""
    return [(path, m) for path, m in model.named_modules() if LAYER.match(path)]


def enable(model) -> list[str]:
    """Checkpoint every repeated layer of `model` in place; the paths."""
    found = layers(model)
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
