"""Dropout keep masks drawn once, from NumPy, so numpy_ref, torch_impl and tf_impl drop the same units.

Each framework's `Dropout` in training mode takes its keep mask from, in order: the `keep`
argument; the active provider here; its own random generator. While `supplying(...)` is
active, the provider draws the mask of one Dropout call from

    np.random.default_rng([seed, step, crc32(path), call])

where `path` is the Dropout module's dotted path (`encoder.0.attention_dropout`, the same
string in all three frameworks), `step` the training step (one micro-batch) and `call` how
many times that module has already run in this step. The mask depends on nothing a
framework decides (not the order modules run in, not a framework RNG), so three forwards
of the same model on the same batch drop exactly the same units. Module paths come from a
{id(module): path} map of the model's module tree, as `conformance.core.trace` builds it.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Iterable

import numpy as np

_active: "Provider | None" = None


class Provider:
    def __init__(self, named_modules: Iterable, seed: int, step: int):
        self.paths = {id(module): path for path, module in named_modules}
        self.seed, self.step = seed, step
        self.calls: dict[str, int] = {}

    def keep(self, module, shape: tuple, rate: float) -> np.ndarray:
        """The bool keep mask (True = keep, probability 1 - rate) of `module`'s next call."""
        path = self.paths.get(id(module))
        if path is None:
            raise ValueError(f"module must belong to the model the dropout masks are supplied for; "
                             f"received a {type(module).__name__} not in its module tree")
        call = self.calls.get(path, 0)
        self.calls[path] = call + 1
        rng = np.random.default_rng([self.seed, self.step, zlib.crc32(path.encode()), call])
        return rng.random(shape) >= rate


def active() -> bool:
    return _active is not None


def keep(module, shape: tuple, rate: float) -> np.ndarray:
    """The active provider's keep mask for `module`'s next call (call only while `active()`)."""
    return _active.keep(module, shape, rate)


def snapshot() -> "Provider | None":
    """A copy of the active provider as it stands (its call counts so far), or None: what a
    recomputation (gradient checkpointing) needs to draw the same masks again later."""
    return None if _active is None else snapshot_of(_active)


@contextmanager
def replaying(saved: "Provider | None"):
    """Supply the masks `saved` (a `snapshot`) would have drawn next, whatever is active now: a
    checkpointed layer's recomputation, run during backward after `supplying` has ended, then drops
    the units its forward dropped. None: nothing changes."""
    global _active
    if saved is None:
        yield
        return
    before = _active
    _active = snapshot_of(saved)
    try:
        yield
    finally:
        _active = before


def snapshot_of(saved: Provider) -> Provider:
    copy = Provider((), saved.seed, saved.step)
    copy.paths, copy.calls = saved.paths, dict(saved.calls)
    return copy


@contextmanager
def supplying(named_modules: Iterable, seed: int, step: int):
    """Supply every Dropout in the tree `named_modules` ((path, module) pairs) with NumPy masks."""
    global _active
    if _active is not None:
        raise RuntimeError("dropout masks are already being supplied")
    _active = Provider(named_modules, seed, step)
    try:
        yield _active
    finally:
        _active = None
